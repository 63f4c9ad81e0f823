"""Image encoders (backbones) and the classifier built on them.

Every backbone maps normalised images ``(B, in_channels, S, S)`` (see
:func:`cxr_triage.data.preprocess.to_model_input`) to features ``(B, embedding_dim)``. The large
networks come from MONAI; ``small_cnn`` is ours, sized for 2-core CPU demos at 128 px.

The wrapped network always sits at ``Backbone.net`` with the architecture's own parameter names
(MONAI's), so :mod:`cxr_triage.models.weights` can map external checkpoints onto it.
"""

from __future__ import annotations

import torch
from torch import nn

from cxr_triage.errors import ConfigError

__all__ = ["ARCHITECTURES", "Backbone", "Classifier", "build_backbone"]

ARCHITECTURES: tuple[str, ...] = (
    "densenet121",
    "resnet18",
    "resnet50",
    "efficientnet-b0",
    "small_cnn",
)

_SMALL_CNN_WIDTHS = (32, 64, 128, 256)


class Backbone(nn.Module):
    """A feature extractor: images in, one embedding vector per image out.

    Args:
        net: module mapping ``(B, C, S, S)`` to ``(B, embedding_dim)``.
        arch: architecture name (one of :data:`ARCHITECTURES`).
        embedding_dim: length of the feature vector.
        in_channels: number of input channels the first layer expects.
    """

    def __init__(self, net: nn.Module, *, arch: str, embedding_dim: int, in_channels: int) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.embedding_dim = embedding_dim
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the embeddings ``(B, embedding_dim)`` of ``x``."""
        return self.net(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Return the embeddings ``(B, embedding_dim)`` of ``x`` (same as calling the module)."""
        return self(x)


class Classifier(nn.Module):
    """A backbone plus a linear head; the forward pass returns logits ``(B, n_outputs)``.

    Used with ``n_outputs=14`` for multi-label pretraining on the finding labels and with
    ``n_outputs=1`` for the binary Normal/Abnormal model.

    Args:
        backbone: the feature extractor.
        n_outputs: number of logits.

    Raises:
        ConfigError: if ``n_outputs`` is not positive.
    """

    def __init__(self, backbone: Backbone, n_outputs: int) -> None:
        super().__init__()
        if n_outputs < 1:
            raise ConfigError(f"n_outputs must be >= 1, got {n_outputs}")
        self.backbone = backbone
        self.n_outputs = n_outputs
        self.head = nn.Linear(backbone.embedding_dim, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, n_outputs)``."""
        return self.head(self.backbone(x))


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


def _small_cnn(in_channels: int) -> tuple[nn.Module, int]:
    # A strided stem then one downsampling + one refining conv per stage: about 0.17 GMAC at
    # 128 px (DenseNet121 is about 0.95), enough to learn lesion-sized blobs on the synthetic set.
    layers: list[nn.Module] = _conv_bn_relu(in_channels, _SMALL_CNN_WIDTHS[0], stride=2)
    for prev, width in zip(_SMALL_CNN_WIDTHS[:-1], _SMALL_CNN_WIDTHS[1:], strict=True):
        layers += _conv_bn_relu(prev, width, stride=2) + _conv_bn_relu(width, width, stride=1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), _SMALL_CNN_WIDTHS[-1]


def build_backbone(arch: str, *, in_channels: int = 1) -> Backbone:
    """Build a randomly initialised backbone (no weights are ever downloaded).

    MONAI's ResNets are built with torchvision's stem (7x7 conv, stride 2) and bias-free
    shortcut convolutions, so torchvision-style ResNet checkpoints fit them.

    Args:
        arch: one of :data:`ARCHITECTURES`.
        in_channels: input channels; 1 for the project's grey images.

    Returns:
        The backbone, in training mode.

    Raises:
        ConfigError: if ``arch`` is unknown or ``in_channels`` is not positive.
    """
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    net: nn.Module
    if arch == "small_cnn":
        net, dim = _small_cnn(in_channels)
        return Backbone(net, arch=arch, embedding_dim=dim, in_channels=in_channels)
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"unknown backbone architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    # MONAI is imported only here: it takes seconds, and small_cnn runs (tests, demos) skip it.
    from monai.networks.nets import DenseNet121, EfficientNetBN, resnet18, resnet50

    if arch == "densenet121":
        net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1)
        # Drop the output layer; class_layers then ends in ReLU -> pool -> flatten.
        net.class_layers.out = nn.Identity()
        dim = 1024
    elif arch in ("resnet18", "resnet50"):
        factory = resnet18 if arch == "resnet18" else resnet50
        net = factory(
            spatial_dims=2,
            n_input_channels=in_channels,
            feed_forward=False,
            conv1_t_size=7,
            conv1_t_stride=2,
            bias_downsample=False,
        )
        dim = 512 if arch == "resnet18" else 2048
    else:
        net = EfficientNetBN(
            "efficientnet-b0",
            pretrained=False,
            spatial_dims=2,
            in_channels=in_channels,
            num_classes=1,
        )
        net._fc = nn.Identity()
        dim = 1280
    return Backbone(net, arch=arch, embedding_dim=dim, in_channels=in_channels)
