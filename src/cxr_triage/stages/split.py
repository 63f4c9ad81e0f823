"""``split`` stage: manifest -> ``paths.split_dir/split.csv`` (patient-level train/val/test)."""

from __future__ import annotations

import logging
from pathlib import Path

from cxr_triage.atomic import atomic_path, write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import read_manifest
from cxr_triage.data.split import split_by_patient, split_counts
from cxr_triage.errors import DataError
from cxr_triage.stages._entry import run_stage

log = logging.getLogger(__name__)


def run(params: Params) -> dict[str, dict[str, float]]:
    """Split the manifest by patient and write the assignment and per-split counts."""
    try:
        manifest = read_manifest(params.paths.ingest_dir)
    except FileNotFoundError as exc:
        raise DataError(f"{exc.filename} is missing; run `dvc repro ingest` first") from exc
    splits = split_by_patient(manifest, params.split, seed=params.seed)
    out_dir = Path(params.paths.split_dir)
    with atomic_path(out_dir / "split.csv") as tmp:
        splits.to_csv(tmp, index=False)
    counts = split_counts(splits)
    write_json_atomically(out_dir / "counts.json", counts)
    log.info("split: %s", {k: v["n_images"] for k, v in counts.items()})
    return counts


def main() -> None:
    run_stage("split", run)


if __name__ == "__main__":
    main()
