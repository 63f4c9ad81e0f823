"""The canonical dataset as stages read it: manifest + pixels + split, joined and checked once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_triage.data.split import SPLITS, assert_patient_disjoint
from cxr_triage.errors import DataError
from cxr_triage.vocabulary import ABNORMAL, FINDING_COLUMNS

__all__ = ["Dataset", "load_dataset", "read_manifest"]


@dataclass(frozen=True)
class Dataset:
    """``manifest`` has one row per image (with its ``split``); ``pixels[row]`` is its image."""

    manifest: pd.DataFrame
    pixels: np.ndarray  # uint8 (N, S, S), memory-mapped

    def rows(self, split: str) -> np.ndarray:
        """Pixel/manifest row indices of one split, in manifest order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        return self.manifest.index[self.manifest["split"] == split].to_numpy()

    def development_rows(self) -> np.ndarray:
        """Train and val rows (the development set every model is fitted and chosen on), in
        manifest order; test rows are never among them."""
        return self.manifest.index[self.manifest["split"].isin(("train", "val"))].to_numpy()

    def labels(self, rows: np.ndarray) -> np.ndarray:
        """1 = abnormal, 0 = normal."""
        return self.manifest.loc[rows, "label"].eq(ABNORMAL).to_numpy(dtype=np.int64)

    def findings(self, rows: np.ndarray) -> np.ndarray:
        """The 14 finding flags ``(n, 14)`` as float32 (multi-label targets)."""
        return self.manifest.loc[rows, list(FINDING_COLUMNS)].to_numpy(dtype=np.float32)

    def patients(self, rows: np.ndarray) -> np.ndarray:
        return self.manifest.loc[rows, "patient_id"].to_numpy()

    def image_ids(self, rows: np.ndarray) -> np.ndarray:
        return self.manifest.loc[rows, "image_id"].to_numpy()


def read_manifest(ingest_dir: str | Path) -> pd.DataFrame:
    """``manifest.csv`` with identifiers as strings, empty text as "" and unknown ages as NaN."""
    return pd.read_csv(
        Path(ingest_dir) / "manifest.csv",
        dtype={"image_id": str, "patient_id": str, "study_id": str},
        keep_default_na=False,
        na_values={"age": [""]},
    )


def load_dataset(ingest_dir: str | Path, split_dir: str | Path) -> Dataset:
    """Join ``manifest.csv``, ``pixels.npy`` and ``split.csv``; check they describe one dataset.

    Raises:
        DataError: missing files or outputs of different runs (re-run ``dvc repro``).
        LeakageError: a patient in two splits.
    """
    ingest_dir, split_dir = Path(ingest_dir), Path(split_dir)
    try:
        manifest = read_manifest(ingest_dir)
        pixels = np.load(ingest_dir / "pixels.npy", mmap_mode="r")
        splits = pd.read_csv(split_dir / "split.csv", dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise DataError(f"{exc.filename} is missing; run `dvc repro split` first") from exc
    if len(manifest) != pixels.shape[0] or not manifest["row"].eq(np.arange(len(manifest))).all():
        raise DataError(f"{ingest_dir}: manifest.csv and pixels.npy disagree; re-run ingest")
    split_of = splits.set_index("image_id")["split"]
    manifest["split"] = manifest["image_id"].map(split_of)
    if manifest["split"].isna().any() or len(splits) != len(manifest):
        raise DataError(f"{split_dir}/split.csv is from another ingest run; re-run `dvc repro`")
    assert_patient_disjoint(manifest[["patient_id", "split"]])
    return Dataset(manifest=manifest, pixels=pixels)
