"""Sections of the data stages: paths, the synthetic default, ingest and split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cxr_triage.errors import ConfigError

__all__ = ["IngestParams", "PathsParams", "SOURCES", "SplitParams", "SynthParams"]

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
    package_dir: str = "models/package"  # the model package (the service loads it)
    package_report_dir: str = "reports/package"  # model tag, bento tag, versions


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
