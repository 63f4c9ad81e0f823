"""Sections of the data stages: paths, the synthetic default, ingest and split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["IngestParams", "PathsParams", "SOURCES", "SplitParams", "SynthParams"]

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
