"""``ingest`` stage: the configured source -> ``paths.ingest_dir`` (manifest, pixels, rejects)."""

from __future__ import annotations

from pathlib import Path

from cxr_triage.config import Params
from cxr_triage.data.ingest import IngestSummary, ingest_source
from cxr_triage.io.records import ImageLimits
from cxr_triage.stages._entry import run_stage


def run(params: Params) -> IngestSummary:
    """Discover the source's files, read and de-identify them, write the canonical dataset."""
    p = params.ingest
    return ingest_source(
        p.source,
        Path(p.source_dir),
        Path(params.paths.ingest_dir),
        labels_csv=p.labels_csv,
        site=p.site,
        image_size=p.image_size,
        limits=ImageLimits.from_params(p),
        workers=p.workers,
    )


def main() -> None:
    run_stage("ingest", run)


if __name__ == "__main__":
    main()
