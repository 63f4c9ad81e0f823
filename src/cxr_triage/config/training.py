"""Sections of the training stages: backbone, embed, transfer and finetune (and their options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cxr_triage.errors import ConfigError

__all__ = [
    "LOSSES",
    "ZOO_NAMES",
    "AugmentOptions",
    "BackboneParams",
    "EmbedParams",
    "FinetuneOptions",
    "FinetuneParams",
    "SslParams",
    "TransferParams",
]


@dataclass(frozen=True)
class AugmentOptions:
    """Ranges of the random transforms; each is sampled uniformly per image.

    Attributes:
        max_rotation_deg: rotation in ``[-r, r]`` degrees.
        max_translation: shift in ``[-t, t]`` as a fraction of the image side.
        scale_range: zoom factor range (``> 1`` enlarges the anatomy).
        brightness: additive shift in ``[-b, b]`` on ``[0, 1]`` intensities.
        contrast: multiplicative factor in ``[1 - c, 1 + c]`` around the image mean.
        gamma_range: exponent range applied to ``[0, 1]`` intensities.
        hflip_p: probability of a horizontal flip; 0 by default (see the module docstring).
    """

    max_rotation_deg: float = 7.0
    max_translation: float = 0.05
    scale_range: tuple[float, float] = (0.93, 1.07)
    brightness: float = 0.05
    contrast: float = 0.1
    gamma_range: tuple[float, float] = (0.85, 1.15)
    hflip_p: float = 0.0

    def __post_init__(self) -> None:
        for name in ("scale_range", "gamma_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(
                    f"augment {name} must satisfy 0 < low <= high, got {(low, high)}"
                )
        if not 0.0 <= self.hflip_p <= 1.0:
            raise ConfigError(f"augment hflip_p must be in [0, 1], got {self.hflip_p}")


LOSSES: tuple[str, ...] = ("bce", "weighted_bce", "focal")


@dataclass(frozen=True)
class FinetuneOptions:
    """Settings of one training run.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: training images per optimiser step.
        lr: peak AdamW learning rate (cosine-annealed to 0 over ``epochs``).
        weight_decay: AdamW decoupled weight decay.
        loss: ``"bce"``, ``"weighted_bce"`` (positives weighted by the train set's
            negative/positive ratio, per label) or ``"focal"``.
        focal_gamma: focusing exponent of the focal loss.
        focal_alpha: weight of positives in the focal loss (negatives get ``1 - alpha``);
            None weights both classes equally.
        patience: epochs without a better val AUROC before stopping; None never stops early.
        augment: apply :func:`~cxr_triage.models.augment.augment_batch` to training batches.
        augment_options: ranges of the random transforms.
        seed: seed of shuffling, augmentation and dropout.
        mixed_precision: autocast on a GPU (bfloat16 where supported, else float16 with loss
            scaling); the CPU always trains in float32 (bf16 without hardware support is slower).
        num_threads: torch CPU threads during training; None keeps the current setting.
        freeze_backbone_epochs: first epochs that train only the head (backbone frozen, its
            BatchNorm statistics too).
        max_train_seconds: wall-time budget; no new epoch starts when the previous epoch's
            duration would overrun it. None means no budget.
        eval_batch_size: images per forward pass when scoring val.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "weighted_bce"
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    patience: int | None = 3
    augment: bool = True
    augment_options: AugmentOptions = field(default_factory=AugmentOptions)
    seed: int = 0
    mixed_precision: bool = False
    num_threads: int | None = None
    freeze_backbone_epochs: int = 0
    max_train_seconds: float | None = None
    eval_batch_size: int = 128

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"finetune loss {self.loss!r} is unknown; choose one of {LOSSES}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size}
        positive["eval_batch_size"] = self.eval_batch_size
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"finetune {name} must be >= 1, got {value}")
        if self.batch_size < 2:
            raise ConfigError("finetune batch_size must be >= 2 (BatchNorm needs two images)")
        if not self.lr > 0:
            raise ConfigError(f"finetune lr must be > 0, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"finetune patience must be >= 1 or None, got {self.patience}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"finetune num_threads must be >= 1 or None, got {self.num_threads}")
        if self.focal_alpha is not None and not 0 < self.focal_alpha < 1:
            raise ConfigError(f"finetune focal_alpha must be in (0, 1), got {self.focal_alpha}")
        if self.freeze_backbone_epochs < 0:
            raise ConfigError("finetune freeze_backbone_epochs must be >= 0")


@dataclass(frozen=True)
class FinetuneParams(FinetuneOptions):
    """The fine-tuned candidate: ``FinetuneOptions`` plus how it is cross-validated.

    Attributes:
        enabled: false for an ONNX backbone, which can only be used frozen.
        cv_repeats: repeats of the network's patient-grouped CV over train+val (the first
            ``cv_repeats`` fold assignments of ``compare``; each costs ``compare.cv_folds``
            trainings).
        inner_val_frac: share of each training fold's patients held out for early stopping.
    """

    enabled: bool = True
    cv_repeats: int = 1
    inner_val_frac: float = 0.15

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cv_repeats < 1:
            raise ConfigError(f"finetune cv_repeats must be >= 1, got {self.cv_repeats}")
        if not 0 < self.inner_val_frac < 0.5:
            raise ConfigError("finetune inner_val_frac must be in (0, 0.5)")


def _ssl_augment() -> AugmentOptions:
    # Stronger than the supervised defaults: two views must differ enough that matching them
    # needs anatomy, not pixel statistics (SimCLR's lesson: augmentation strength matters most).
    return AugmentOptions(
        max_rotation_deg=12.0,
        max_translation=0.1,
        scale_range=(0.8, 1.2),
        brightness=0.15,
        contrast=0.3,
        gamma_range=(0.7, 1.4),
    )


@dataclass(frozen=True)
class SslParams:
    """Self-supervised (SimCLR-style contrastive) pretraining of the backbone, before the
    supervised 14-finding pretraining, on every image available except the run's test patients.

    Attributes:
        enabled: run it (off by default: it multiplies the backbone stage's cost).
        epochs: passes over the image pool.
        batch_size: images per step (each gives two views; the other 2B - 2 are negatives).
        lr: peak AdamW learning rate (cosine-annealed).
        weight_decay: AdamW decoupled weight decay.
        temperature: NT-Xent temperature.
        projection_dim: output of the projection head (discarded after pretraining).
        extra_dirs: more image folders, labelled or not; each needs a ``labels.csv`` with
            ``image`` and ``patient_id`` so that test patients can be left out.
        augment: ranges of the view transforms.
        num_threads: torch CPU threads (fixed for reproducibility).
        mixed_precision: autocast on a GPU (as fine-tuning).
    """

    enabled: bool = False
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    projection_dim: int = 128
    extra_dirs: list[str] = field(default_factory=list)
    augment: AugmentOptions = field(default_factory=_ssl_augment)
    num_threads: int | None = 2
    mixed_precision: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0:
            raise ConfigError("backbone.ssl needs epochs >= 1, batch_size >= 2 and lr > 0")
        if not self.temperature > 0:
            raise ConfigError("backbone.ssl.temperature must be > 0")


@dataclass(frozen=True)
class BackboneParams:
    """The foundation model: an architecture and either a weights file or pretraining here."""

    arch: Literal["small_cnn", "densenet121", "resnet18", "resnet50", "efficientnet-b0"] = (
        "small_cnn"
    )
    # .pt/.pth/.safetensors (CheXNet/torchvision DenseNet121 keys are mapped) or .onnx (frozen
    # use only); null = pretrain on the train split's 14 findings with `pretrain`.
    weights: str | None = None
    # after SSL, also learn the train split's 14 finding labels (false needs ssl.enabled: the
    # frozen-feature CV then cannot leak labels through the backbone; README, issue 12)
    finding_labels: bool = True
    pretrain: FinetuneOptions = field(
        default_factory=lambda: FinetuneOptions(loss="bce", epochs=8, patience=3)
    )
    ssl: SslParams = field(default_factory=SslParams)

    def __post_init__(self) -> None:
        if self.weights is None and not (self.finding_labels or self.ssl.enabled):
            raise ConfigError(
                "backbone.finding_labels is false and backbone.ssl.enabled is false: the "
                "backbone would keep its random initialisation; enable one of them, or set "
                "backbone.weights to a pretrained weights file"
            )


@dataclass(frozen=True)
class EmbedParams:
    """Frozen-backbone embeddings: inference mode and batch size (fastest measured is default)."""

    mode: Literal["eager", "channels_last", "bfloat16", "onnx"] = "eager"
    batch_size: int = 64


ZOO_NAMES: tuple[str, ...] = (
    "logreg",
    "linear_svm",
    "rbf_svm",
    "random_forest",
    "hist_gb",
    "knn",
    "mlp",
)


@dataclass(frozen=True)
class TransferParams:
    """The classifier zoo on embeddings: every configuration of every candidate scored out of
    fold on ``compare``'s folds of train+val, each candidate's best refitted on train+val.

    Attributes:
        candidates: zoo members (:data:`ZOO_NAMES`).
        n_jobs: parallel fitting processes (joblib; -1 = all cores). Every fit runs on one
            BLAS/OpenMP thread, so the results do not depend on this or on the core count.
    """

    candidates: list[str] = field(default_factory=lambda: list(ZOO_NAMES))
    n_jobs: int = 1
