"""Sections of the data stages: paths, the synthetic default, ingest and split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cxr_triage.errors import ConfigError

__all__ = ["IngestParams", "PathsParams", "SOURCES", "SplitParams", "SynthKnobs", "SynthParams"]

SOURCES = ("synthetic", "chestxray14", "folder", "dicom")


@dataclass(frozen=True)
class PathsParams:
    """Every file edge of the pipeline, in one place (``dvc.yaml`` reads ``${paths.*}``)."""

    synth_dir: str = "data/synth"
    ingest_dir: str = "data/ingest"
    split_dir: str = "data/split"
    weights_dir: str = "models/weights"  # backbone weights files you supply (a backbone dep)
    backbone_dir: str = "models/backbone"
    embed_dir: str = "data/embed"
    transfer_dir: str = "models/transfer"
    finetune_dir: str = "models/finetune"
    checkpoint_dir: str = "models/checkpoints"
    compare_dir: str = "reports/compare"
    threshold_dir: str = "reports/threshold"
    evaluate_dir: str = "reports/evaluate"
    explain_dir: str = "reports/explain"  # explanation figures (explain stage)
    package_dir: str = "models/package"  # the model package (the service loads it)
    package_report_dir: str = "reports/package"  # model tag, bento tag, versions
    # the headline metrics (winner, test AUROC and CI, ECE, sens/spec, auto-cleared share): the
    # only file dvc.yaml declares as metrics; at the root so that `dvc metrics show` fits 100
    # columns (its Path column is as wide as this path)
    metrics_file: str = "metrics.json"


@dataclass(frozen=True)
class SynthKnobs:
    """The synthetic generator's difficulty and content knobs (``params.yaml`` ``synth``).

    The defaults are the tuned default dataset; :class:`cxr_triage.data.synth.SynthConfig`
    validates them.

    Args:
        lesion_contrast: range of the per-finding contrast multiplier (1 = a clearly visible
            lesion of that kind); drawn uniformly per finding.
        lesion_size: range of the per-finding size multiplier (1 = typical size of that kind).
        subtle_fraction: fraction of abnormal images drawn subtle: every finding at
            ``subtle_scale`` times its contrast and at the smallest size of ``lesion_size``.
            These are what keeps a good model well below AUROC 1.0.
        subtle_scale: contrast multiplier of subtle findings.
        max_findings: most findings per abnormal image (1 to 14); the count is drawn with
            decreasing probability, as in ChestX-ray14.
        label_noise: fraction of images whose content disagrees with the label, as in report-mined
            labels: a labelled abnormal image drawn without visible finding, or a "No Finding"
            image with an unlabelled faint finding.
        anatomy_variation: scale of normal anatomical variability (heart and lung size and shape,
            diaphragm height, breast and rib density); 0 makes all patients alike.
        pose_jitter: scale of per-image rotation (about 3 degrees at 1), translation and scale.
        ap_abnormal_ratio: how much more often abnormal images are AP than normal ones (about 2 in
            real data); 1 removes the view shortcut.
        max_followups: most images per patient (follow-ups share sex, age, anatomy and chronic
            findings; their labels may differ).
        prevalence: abnormal fraction overriding the site's ``abnormal_prevalence``; None keeps it.
        image_size: longest side in pixels overriding the site's native size (aspect and field of
            view kept, pixel spacing scaled); None keeps the native size.
    """

    lesion_contrast: tuple[float, float] = (1.0, 1.8)
    lesion_size: tuple[float, float] = (1.0, 1.8)
    subtle_fraction: float = 0.08
    subtle_scale: float = 0.6
    max_findings: int = 3
    label_noise: float = 0.015
    anatomy_variation: float = 1.0
    pose_jitter: float = 1.0
    ap_abnormal_ratio: float = 2.0
    max_followups: int = 5
    prevalence: float | None = None
    image_size: int | None = None


@dataclass(frozen=True)
class SynthParams(SynthKnobs):
    """The embedded default dataset: synthetic sites, their image counts and the knobs."""

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
    # Input guards (cxr_triage.io.records.ImageLimits), applied before anything is decoded; the
    # model package records them, so the service, predict and the gate apply the same ones.
    max_pixels: int = 40_000_000  # Rows x Columns x frames
    bomb_ratio: float = 100.0  # decoded/file size above which an oversize file is a bomb
    max_file_mb: float = 256.0  # largest file read at all
    max_inflated_mb: float = 256.0  # largest inflated size of a deflated DICOM data set
    max_header_elements: int = 50_000  # most top-level DICOM header elements
    allowed_modalities: list[str] = field(default_factory=lambda: ["CR", "DX"])
    workers: int = 0  # 0 = all cores

    def __post_init__(self) -> None:
        positive = {
            "max_pixels": self.max_pixels,
            "bomb_ratio": self.bomb_ratio,
            "max_file_mb": self.max_file_mb,
            "max_inflated_mb": self.max_inflated_mb,
            "max_header_elements": self.max_header_elements,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"ingest.{name} must be > 0, got {value}")
        if not self.allowed_modalities:
            raise ConfigError(
                "ingest.allowed_modalities: list at least one DICOM Modality (CR, DX)"
            )


@dataclass(frozen=True)
class SplitParams:
    """Patient-level, label-stratified train/val/test proportions."""

    val_frac: float = 0.15
    test_frac: float = 0.2
    use_official: bool = True  # ChestX-ray14: honour test_list.txt / train_val_list.txt
