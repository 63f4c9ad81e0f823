"""Typed parameters: one frozen dataclass per ``params.yaml`` section, one loader.

``load_params()`` rejects unknown keys, missing keys and wrong types with a :class:`ConfigError`
naming the key (``ingest.image_size: expected int, got 'big'``), so a typo in ``params.yaml`` or
in ``dvc exp run -S`` fails before any work starts. Each stage receives only its own section.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cxr_triage.errors import ConfigError

__all__ = [
    "IngestParams",
    "Params",
    "PathsParams",
    "SOURCES",
    "SplitParams",
    "SynthParams",
    "load_params",
    "parse_section",
]

SOURCES = ("synthetic", "chestxray14", "folder", "dicom")


@dataclass(frozen=True)
class PathsParams:
    """Every file edge of the pipeline, in one place (``dvc.yaml`` reads ``${paths.*}``)."""

    synth_dir: str = "data/synth"
    ingest_dir: str = "data/ingest"
    split_dir: str = "data/split"
    backbone_dir: str = "models/backbone"
    embed_dir: str = "data/embed"
    transfer_dir: str = "models/transfer"
    finetune_dir: str = "models/finetune"
    checkpoint_dir: str = "models/checkpoints"
    compare_dir: str = "reports/compare"
    threshold_dir: str = "reports/threshold"
    evaluate_dir: str = "reports/evaluate"
    package_dir: str = "models/package"  # the model package (the service loads it)
    package_report_dir: str = "reports/package"  # model tag, bento tag, versions
    # Operations state, not pipeline outputs (neither DVC- nor git-tracked):
    prediction_log: str = "data/monitoring/predictions.sqlite"  # the service's prediction log
    monitor_dir: str = "reports/monitor"  # drift reports (HTML, JSON) and the Evidently workspace


@dataclass(frozen=True)
class SynthParams:
    """The embedded default dataset: synthetic sites and their image counts."""

    sites: dict[str, int] = field(
        default_factory=lambda: {"hospital_a": 360, "hospital_b": 300, "hospital_c": 240}
    )
    workers: int = 0  # 0 = all cores


@dataclass(frozen=True)
class IngestParams:
    """How a source becomes the canonical dataset (manifest + pixels at training size)."""

    source: Literal["synthetic", "chestxray14", "folder", "dicom"] = "synthetic"
    source_dir: str = "data/synth"
    labels_csv: str | None = None  # relative to source_dir; default depends on the source
    site: str | None = None  # site name for sources that carry none
    image_size: int = 128
    max_pixels: int = 40_000_000
    allowed_modalities: list[str] = field(default_factory=lambda: ["CR", "DX"])
    workers: int = 0  # 0 = all cores


@dataclass(frozen=True)
class SplitParams:
    """Patient-level, label-stratified train/val/test proportions."""

    val_frac: float = 0.15
    test_frac: float = 0.2
    use_official: bool = True  # ChestX-ray14: honour test_list.txt / train_val_list.txt


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
    """The fine-tuned candidate: ``FinetuneOptions`` plus whether to train it at all."""

    enabled: bool = True  # false for an ONNX backbone, which can only be used frozen


@dataclass(frozen=True)
class BackboneParams:
    """The foundation model: an architecture and either a weights file or pretraining here."""

    arch: Literal["small_cnn", "densenet121", "resnet18", "resnet50", "efficientnet-b0"] = (
        "small_cnn"
    )
    # .pt/.pth/.safetensors (CheXNet/torchvision DenseNet121 keys are mapped) or .onnx (frozen
    # use only); null = pretrain on the train split's 14 findings with `pretrain`.
    weights: str | None = None
    pretrain: FinetuneOptions = field(
        default_factory=lambda: FinetuneOptions(loss="bce", epochs=8, patience=3)
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
    """The classifier zoo on embeddings, each tuned by patient-grouped CV on train only."""

    candidates: list[str] = field(default_factory=lambda: list(ZOO_NAMES))
    cv_folds: int = 3
    tune_max_rows: int = 3000
    n_jobs: int = -1


Recalibration = Literal["none", "temperature", "platt", "isotonic"]


@dataclass(frozen=True)
class WinnerRule:
    """How the winner is chosen (see the module docstring).

    Attributes:
        primary: column compared first.
        higher_is_better: direction of ``primary``.
        tie_tolerance: candidates within this absolute distance of the best primary are tied.
        tie_breaker: column that decides among tied candidates.
        tie_breaker_higher_is_better: direction of ``tie_breaker``.
    """

    primary: str = "val_auroc"
    higher_is_better: bool = True
    tie_tolerance: float = 0.005
    tie_breaker: str = "val_ece"
    tie_breaker_higher_is_better: bool = False


@dataclass(frozen=True)
class CompareParams:
    """How candidates are recalibrated and measured on val, and the rule that picks the winner."""

    recalibrate_finetuned: Recalibration = "temperature"
    recalibrate_transfer: Recalibration = "platt"
    calibration_folds: int = 5  # patient folds of val for out-of-fold calibrated metrics
    n_boot: int = 1000
    n_bins: int = 15
    winner: WinnerRule = field(default_factory=WinnerRule)


@dataclass(frozen=True)
class ThresholdParams:
    """The operating point, chosen on val for the winner."""

    policy: Literal["target_sensitivity", "target_specificity", "youden", "min_cost"] = (
        "target_sensitivity"
    )
    target_sensitivity: float = 0.95
    target_specificity: float = 0.9
    require_ci: bool = False  # target_sensitivity: the CI lower bound must reach the target
    cost_fn: float = 10.0  # min_cost: cost of a missed abnormal study
    cost_fp: float = 1.0  # min_cost: cost of a normal study sent for reading
    n_boot: int = 1000


@dataclass(frozen=True)
class EvaluateParams:
    """The single read of the test split."""

    n_boot: int = 1000
    min_slice_count: int = 20  # slices smaller than this are reported but not ranked for gaps


@dataclass(frozen=True)
class PackageParams:
    """The ``package`` stage: the model package, the BentoML model store and the Bento."""

    summary_components: int = 8  # principal components of the embedding logged per prediction
    register: bool = True  # save the package into the BentoML model store
    build_bento: bool = True  # build a Bento from bentofile.yaml (offline)


@dataclass(frozen=True)
class MonitorParams:
    """Drift monitoring (Evidently): how current data is compared with the reference.

    Attributes:
        min_current_rows: below this many current rows the verdict is "insufficient data".
        min_reference_rows: a site's reference rows are used alone only when there are at least
            this many (else the whole reference); a smaller whole reference is "insufficient
            data".
        max_rows: at most this many rows per side for the column drift tests (random sample).
        drift_share: the column test fails when this share of the columns or more drifted.
        num_method, cat_method: Evidently stat test names for numeric / categorical columns;
            null: K-S (reference <= 1000 rows) or normed Wasserstein for numbers, Evidently's
            default for categories.
        num_threshold, cat_threshold: their thresholds; null: the method's default.
        prediction_drift_fails: a drifted ``prob_abnormal`` distribution alone fails the run.
        embedding_method: Evidently ``EmbeddingsDrift`` method: mmd | model | distance | ratio.
        embedding_max_rows: rows per side for the embedding test (its t-SNE plot costs ~4 s at
            500 + 500 rows, ~11 s at 1000 + 1000 on 2 cores).
        calibration_repeats: reference-vs-reference random splits that calibrate the embedding
            threshold (cached per package, site and current size).
        calibration_quantile: quantile of the split scores ...
        calibration_margin: ... times this margin (above the method's no-drift baseline) is the
            embedding threshold.
        retrain_on_drift: the monitoring flow starts retraining when drift is detected.
    """

    min_current_rows: int = 30
    min_reference_rows: int = 50
    max_rows: int = 50_000
    drift_share: float = 0.3
    num_method: str | None = None
    num_threshold: float | None = None
    cat_method: str | None = None
    cat_threshold: float | None = None
    prediction_drift_fails: bool = True
    embedding_method: Literal["mmd", "model", "distance", "ratio"] = "mmd"
    embedding_max_rows: int = 500
    calibration_repeats: int = 50
    calibration_quantile: float = 0.95
    calibration_margin: float = 1.5
    retrain_on_drift: bool = False

    def __post_init__(self) -> None:
        if self.min_current_rows < 2 or self.min_reference_rows < 4:
            raise ConfigError(
                "monitor.min_current_rows must be >= 2 and monitor.min_reference_rows >= 4 "
                "(drift tests need a sample on each side)"
            )
        if self.max_rows < self.min_current_rows or self.embedding_max_rows < 10:
            raise ConfigError(
                "monitor.max_rows must be >= monitor.min_current_rows and "
                "monitor.embedding_max_rows >= 10"
            )
        if not 0 < self.drift_share <= 1:
            raise ConfigError(f"monitor.drift_share must be in (0, 1], got {self.drift_share}")
        if self.calibration_repeats < 5:
            raise ConfigError("monitor.calibration_repeats must be >= 5 (20 or more is better)")
        if not 0.5 <= self.calibration_quantile < 1:
            raise ConfigError(
                "monitor.calibration_quantile must be in [0.5, 1), "
                f"got {self.calibration_quantile}"
            )
        if not self.calibration_margin >= 1:
            raise ConfigError(
                f"monitor.calibration_margin must be >= 1, got {self.calibration_margin}"
            )


@dataclass(frozen=True)
class PromoteParams:
    """The retraining flow's promotion gate (``cxr_triage.orchestration.gate``).

    Attributes:
        frozen_test_dir: a labelled image folder that never enters training; both the serving
            and the candidate package score it.
        frozen_test_source: its layout, as for ``ingest.source``.
        frozen_test_per_site: images per ``synth.sites`` site of the synthetic frozen set.
        frozen_test_seed: seed of the synthetic frozen set; must differ from ``seed``.
        max_auroc_drop: non-inferiority margin: promote only if the lower CI bound of
            (candidate AUROC - serving AUROC) is >= -max_auroc_drop.
        min_sensitivity: sensitivity at the candidate's own threshold on the frozen set must
            reach this.
        n_boot: patient-bootstrap resamples of the paired AUROC difference.
        alpha: 1 minus the CI coverage (0.05: 95% interval).
        min_images: a frozen set with fewer usable images is refused.
    """

    frozen_test_dir: str = "data/frozen_test"
    frozen_test_source: Literal["synthetic", "chestxray14", "folder", "dicom"] = "synthetic"
    frozen_test_per_site: int = 80
    frozen_test_seed: int = 9001
    max_auroc_drop: float = 0.02
    min_sensitivity: float = 0.9
    n_boot: int = 1000
    alpha: float = 0.05
    min_images: int = 30

    def __post_init__(self) -> None:
        if not 0 <= self.max_auroc_drop < 1:
            raise ConfigError(
                f"promote.max_auroc_drop must be in [0, 1), got {self.max_auroc_drop}"
            )
        if not 0 <= self.min_sensitivity <= 1:
            raise ConfigError(
                f"promote.min_sensitivity must be in [0, 1], got {self.min_sensitivity}"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError(f"promote.alpha must be in (0, 1), got {self.alpha}; 0.05 is usual")
        if self.n_boot < 1 or self.min_images < 1 or self.frozen_test_per_site < 1:
            raise ConfigError(
                "promote.n_boot, promote.min_images and promote.frozen_test_per_site must be >= 1"
            )


@dataclass(frozen=True)
class ScheduleParams:
    """Prefect deployments (``python -m flows.deploy``): when monitoring and retraining run.

    Attributes:
        timezone: IANA time zone of both crons (Prefect reads a bare cron as UTC).
        monitoring_cron: when the drift check runs (5-field cron).
        retraining_cron: when retraining runs.
        monitoring_window_hours: the drift check reads this many past hours of the prediction log.
        work_pool: the process work pool that runs the deployments.
    """

    timezone: str = "UTC"
    monitoring_cron: str = "0 6 * * *"
    retraining_cron: str = "0 3 * * 1"
    monitoring_window_hours: float = 24.0
    work_pool: str = "cxr-local"

    def __post_init__(self) -> None:
        for key in ("monitoring_cron", "retraining_cron"):
            if len(str(getattr(self, key)).split()) != 5:
                raise ConfigError(
                    f"schedule.{key}: expected a 5-field cron (minute hour day month weekday), "
                    f"got {getattr(self, key)!r}"
                )
        if not self.monitoring_window_hours > 0:
            raise ConfigError("schedule.monitoring_window_hours must be > 0")
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"schedule.timezone: unknown time zone {self.timezone!r}; use an IANA name such "
                "as UTC or Europe/Berlin"
            ) from exc


@dataclass(frozen=True)
class Params:
    seed: int
    paths: PathsParams
    synth: SynthParams
    ingest: IngestParams
    split: SplitParams
    backbone: BackboneParams
    embed: EmbedParams
    transfer: TransferParams
    finetune: FinetuneParams
    compare: CompareParams
    threshold: ThresholdParams
    evaluate: EvaluateParams
    package: PackageParams = field(default_factory=PackageParams)
    monitor: MonitorParams = field(default_factory=MonitorParams)
    promote: PromoteParams = field(default_factory=PromoteParams)
    schedule: ScheduleParams = field(default_factory=ScheduleParams)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(
            f"{key}: must be one of {', '.join(map(str, typing.get_args(tp)))}; got {value!r}"
        )
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {
            _coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return parse_section(tp, value, key)
    if origin is tuple:
        item_types = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(item_types):
            raise ConfigError(f"{key}: expected a list of {len(item_types)} values, got {value!r}")
        return tuple(
            _coerce(v, t, f"{key}[{i}]")
            for i, (v, t) in enumerate(zip(value, item_types, strict=True))
        )
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        # bool is an int subclass in Python: refuse `true` where a number is expected.
        if isinstance(value, tp) and not (tp is not bool and isinstance(value, bool)):
            return value
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    raise ConfigError(f"{key}: unsupported parameter type {tp!r}")  # pragma: no cover


def parse_section(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types.

    Missing keys take the dataclass default; a key without a default is required.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(f'{prefix}.{k}' if prefix else k for k in unknown)}; "
            f"valid keys{' of ' + prefix if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key}")
    return cls(**kwargs)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        ConfigError: the file is missing or malformed, or a key is unknown, missing or mistyped.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found; run from the project root or pass --params") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    params = parse_section(Params, data, "")
    _validate(params)
    return params


def _validate(p: Params) -> None:
    if p.ingest.image_size < 16 or p.ingest.image_size > 1024:
        raise ConfigError(f"ingest.image_size: must be within 16..1024, got {p.ingest.image_size}")
    if not 0 <= p.split.val_frac < 1 or not 0 <= p.split.test_frac < 1:
        raise ConfigError("split.val_frac and split.test_frac must each be within [0, 1)")
    if p.split.val_frac + p.split.test_frac >= 1:
        raise ConfigError(
            f"split.val_frac + split.test_frac = {p.split.val_frac + p.split.test_frac:g} leaves "
            "no training data; make their sum < 1"
        )
    for key, options in (("finetune", p.finetune), ("backbone.pretrain", p.backbone.pretrain)):
        if options.seed != 0:
            raise ConfigError(f"{key}.seed: remove it; every stage uses the top-level `seed`")
    if any(n <= 0 for n in p.synth.sites.values()) or not p.synth.sites:
        raise ConfigError("synth.sites: give at least one site with a positive image count")
