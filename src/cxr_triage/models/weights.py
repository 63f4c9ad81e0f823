"""Load user-supplied weights safely, and run ONNX embedding models.

Weights come from files only (nothing is downloaded). ``.pt``/``.pth``/``.bin`` files are read
with ``torch.load(..., weights_only=True)``, so a pickle that would run code is refused;
``.safetensors`` files are read with safetensors.

Checkpoints may be a bare state dict or wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``,
may carry DataParallel's ``module.`` prefix, and may use other naming schemes than MONAI's:

* torchvision DenseNet121: ``features.denseblock1.denselayer1.norm1.weight``, and the old
  ``norm.1`` / ``conv.1`` spelling that CheXNet re-implementations still carry;
* CheXNet: ``module.densenet121.features...`` with the head at ``classifier.0``;
* torchvision ResNet18/50: the same names as MONAI's ResNet built by
  :func:`cxr_triage.models.networks.build_backbone`;
* this project's own :class:`~cxr_triage.models.networks.Classifier` and ``Backbone`` files.

A 3-channel first convolution is reduced to 1 channel by summing over its input channels: for a
grey image replicated to RGB, ``sum_c w_c * x == (sum_c w_c) * x``, so the result is exactly what
the RGB network computes on that replicated image. Loading is strict: every backbone parameter
must be found, and nothing left over except a classifier head.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr_triage.errors import ConfigError
from cxr_triage.models.networks import Backbone, Classifier

__all__ = [
    "LoadReport",
    "OnnxEmbedder",
    "export_onnx",
    "load_backbone_weights",
    "load_classifier_weights",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

# ".tar" because CheXNet ports ship `model.pth.tar` (a torch.save file despite the name).
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
# Wrappers that training scripts put around the state dict, and prefixes they put on keys.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_KEY_PREFIXES = ("module.", "densenet121.", "backbone.", "net.", "model.")
# Head parameter names per naming scheme; they are split off the backbone's state dict.
_HEAD_PATTERN = re.compile(
    r"^(?:head|classifier(?:\.0)?|class_layers\.out|fc|_fc)\.(?P<param>weight|bias)$"
)
# torchvision < 0.4 and CheXNet ports spell "norm1" as "norm.1" inside dense layers.
_DENSE_OLD_STYLE = re.compile(
    r"^(?P<layer>.*denselayer\d+)\.(?P<kind>norm|relu|conv)\.(?P<i>[12])\."
)
# torchvision's dense-layer names, mapped into MONAI's nested ``layers`` module.
_DENSE_TORCHVISION = re.compile(
    r"^(?P<layer>.*denselayer\d+)\.(?P<name>(?:norm|relu|conv)[12]\..+)$"
)
_MAX_LISTED = 5


@dataclass(frozen=True)
class LoadReport:
    """What a weights file contributed.

    Attributes:
        path: the file read.
        n_tensors: backbone tensors loaded.
        reduced_first_conv: names of 3-channel convolutions summed to 1 channel.
        head_loaded: whether the classifier head came from the file.
        dropped: checkpoint keys deliberately not used (classifier heads).
    """

    path: Path
    n_tensors: int
    reduced_first_conv: tuple[str, ...]
    head_loaded: bool
    dropped: tuple[str, ...]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``{name: tensor}`` dict on the CPU, without mapping names.

    Args:
        path: a ``.pt``/``.pth``/``.bin``/``.ckpt`` or ``.safetensors`` file.

    Returns:
        The tensors, after unwrapping ``{"state_dict": ...}``/``{"model": ...}``.

    Raises:
        ConfigError: if the file is missing, of an unknown kind, holds pickled objects other
            than tensors and plain containers, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist; check the backbone weights path")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: object = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own untyped errors on bad headers
            raise ConfigError(f"cannot read safetensors file {path}: {exc}") from exc
    elif suffix in _TORCH_SUFFIXES:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ConfigError(
                f"refused to load {path}: it contains pickled Python objects, not just tensors "
                "(loading it could run arbitrary code). Re-save it as a plain state dict "
                "(torch.save(model.state_dict(), ...)) or as .safetensors"
            ) from exc
        except (RuntimeError, EOFError) as exc:
            raise ConfigError(f"cannot read weights file {path}: {exc}") from exc
    else:
        raise ConfigError(
            f"unsupported weights file {path}: use .safetensors or one of "
            f"{', '.join(_TORCH_SUFFIXES)} (ONNX embedding models go through OnnxEmbedder)"
        )
    state = _unwrap(raw)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not tensors:
        raise ConfigError(f"weights file {path} contains no tensors; expected a model state dict")
    return tensors


def _unwrap(raw: object) -> Mapping[str, object]:
    while isinstance(raw, Mapping):
        inner = next((raw[k] for k in _WRAPPER_KEYS if isinstance(raw.get(k), Mapping)), None)
        if inner is None:
            return raw
        raw = inner
    raise ConfigError(f"expected a state dict (a mapping of names to tensors), got {type(raw)}")


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _canonical_key(key: str, arch: str) -> str:
    key = _strip_prefixes(key)
    if arch == "densenet121":
        key = _DENSE_OLD_STYLE.sub(r"\g<layer>.\g<kind>\g<i>.", key)
        key = _DENSE_TORCHVISION.sub(r"\g<layer>.layers.\g<name>", key)
    return key


def _split_state(
    state: Mapping[str, torch.Tensor], arch: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Map keys into the backbone's naming; return (backbone tensors, head tensors)."""
    body: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = _canonical_key(key, arch)
        match = _HEAD_PATTERN.match(name)
        target, name = (head, match["param"]) if match else (body, name)
        if name in target:
            raise ConfigError(f"two checkpoint keys map to {name!r} (one of them is {key!r})")
        target[name] = value
    return body, head


def _listed(names: set[str] | list[str]) -> str:
    names = sorted(names)
    more = f" (and {len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def _load_into_backbone(
    backbone: Backbone, body: dict[str, torch.Tensor], path: Path
) -> tuple[int, tuple[str, ...]]:
    expected = backbone.net.state_dict()
    reduced: list[str] = []
    for name, value in list(body.items()):
        want = expected.get(name)
        if (
            want is not None
            and value.ndim == 4
            and want.ndim == 4
            and value.shape[1] == 3
            and want.shape[1] == 1
            and value.shape[0] == want.shape[0]
            and value.shape[2:] == want.shape[2:]
        ):
            body[name] = value.sum(dim=1, keepdim=True)
            reduced.append(name)
    # Checkpoints from before torch 0.4.1 have no BatchNorm counters; they only feed momentum=None.
    missing = {k for k in expected if k not in body and not k.endswith("num_batches_tracked")}
    unexpected = set(body) - set(expected)
    if missing or unexpected:
        raise ConfigError(
            f"weights file {path} does not fit a {backbone.arch} backbone: "
            f"{len(missing)} missing keys [{_listed(missing)}], "
            f"{len(unexpected)} unexpected keys [{_listed(unexpected)}]. "
            "Check that the file is a checkpoint of this architecture (backbone.arch)"
        )
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in body.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise ConfigError(
            f"weights file {path} has tensors of the wrong shape for a {backbone.arch} backbone "
            f"with {backbone.in_channels} input channel(s): {_listed(wrong)}"
        )
    backbone.net.load_state_dict(body, strict=False)
    if reduced:
        logger.info("summed 3-channel weights to 1 channel for %s", ", ".join(reduced))
    return len(body), tuple(reduced)


def load_backbone_weights(backbone: Backbone, path: str | Path) -> LoadReport:
    """Load a checkpoint's encoder weights into ``backbone``, strictly; heads are dropped.

    Args:
        backbone: built by :func:`~cxr_triage.models.networks.build_backbone` with the
            checkpoint's architecture.
        path: the weights file (see the module docstring for accepted layouts).

    Returns:
        What was loaded and what was dropped.

    Raises:
        ConfigError: if the file cannot be read safely, or any backbone key is missing,
            unexpected or of the wrong shape.
    """
    path = Path(path)
    body, head = _split_state(read_state_dict(path), backbone.arch)
    n, reduced = _load_into_backbone(backbone, body, path)
    if head:
        logger.info("dropped the classifier head of %s (a new head is trained)", path)
    return LoadReport(path, n, reduced, head_loaded=False, dropped=tuple(sorted(head)))


def load_classifier_weights(classifier: Classifier, path: str | Path) -> LoadReport:
    """Load a checkpoint into a classifier: the backbone strictly, the head when shapes match.

    Args:
        classifier: the model to fill.
        path: the weights file.

    Returns:
        What was loaded; ``head_loaded`` is False when the file's head has another shape (for
        instance 14 findings into a 1-output model) or there is none, and the head keeps its
        fresh initialisation.

    Raises:
        ConfigError: as :func:`load_backbone_weights`.
    """
    path = Path(path)
    body, head = _split_state(read_state_dict(path), classifier.backbone.arch)
    n, reduced = _load_into_backbone(classifier.backbone, body, path)
    expected = classifier.head.state_dict()
    fits = set(head) == set(expected) and all(head[k].shape == expected[k].shape for k in expected)
    if fits:
        classifier.head.load_state_dict(head)
    elif head:
        logger.info(
            "head of %s does not fit %d outputs; it was not loaded", path, classifier.n_outputs
        )
    dropped = () if fits else tuple(sorted(head))
    return LoadReport(path, n + (len(head) if fits else 0), reduced, fits, dropped)


def export_onnx(backbone: nn.Module, path: str | Path, image_size: int) -> Path:
    """Export a backbone as an ONNX embedding model with a dynamic batch axis.

    The model's input is ``images`` ``(B, C, S, S)`` float32, its output ``embeddings``
    ``(B, D)``. The module is exported in eval mode and left in the mode it was in.

    Args:
        backbone: the module to export (a :class:`Backbone` or any images-to-vectors module).
        path: the ``.onnx`` file to write.
        image_size: ``S`` of the example input used for tracing.

    Returns:
        ``path``.
    """
    path = Path(path)
    in_channels = int(getattr(backbone, "in_channels", 1))
    was_training = backbone.training
    backbone.eval()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated but, unlike the dynamo one, needs no
            # onnxscript and handles MONAI's networks; its deprecation notice is not actionable.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                backbone,
                (torch.zeros(1, in_channels, image_size, image_size),),
                str(path),
                dynamo=False,
                input_names=["images"],
                output_names=["embeddings"],
                dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                opset_version=17,
            )
    finally:
        backbone.train(was_training)
    return path


class OnnxEmbedder:
    """An ONNX embedding model run with onnxruntime on the CPU.

    Offers the same ``embed`` call as a backbone, on numpy arrays. A model that expects 3
    channels gets the grey image replicated.

    Args:
        path: the ``.onnx`` file; one float32 input ``(B, 1|3, S, S)``, first output ``(B, D)``.
        num_threads: onnxruntime intra-op threads; None lets onnxruntime choose.

    Raises:
        ConfigError: if the file is missing or its input is not ``(B, 1|3, S, S)``.
    """

    def __init__(self, path: str | Path, *, num_threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"ONNX model {self.path} does not exist; check the model path")
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        model_input = self._session.get_inputs()[0]
        shape = model_input.shape
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise ConfigError(
                f"ONNX model {self.path} takes input of shape {shape}; expected (B, 1|3, S, S)"
            )
        self._input_name = model_input.name
        self.in_channels = int(shape[1])
        out_shape = self._session.get_outputs()[0].shape
        self.embedding_dim: int | None = out_shape[-1] if isinstance(out_shape[-1], int) else None

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Return float32 embeddings ``(B, D)`` of normalised images ``(B, 1, S, S)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[1] == 1 and self.in_channels == 3:
            x = np.repeat(x, 3, axis=1)
        out = self._session.run(None, {self._input_name: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)

    __call__ = embed
