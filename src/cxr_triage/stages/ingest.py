"""``ingest`` stage: the configured source -> ``paths.ingest_dir`` (manifest, pixels, rejects)."""

from __future__ import annotations

from pathlib import Path

from cxr_triage.config import IngestParams, Params
from cxr_triage.data.deid import salt_from_env
from cxr_triage.data.ingest import IngestSummary, ingest
from cxr_triage.data.sources import discover
from cxr_triage.io.records import ImageLimits
from cxr_triage.stages._entry import run_stage


def limits_from(params: IngestParams) -> ImageLimits:
    return ImageLimits(
        max_pixels=params.max_pixels,
        allowed_modalities=tuple(m.upper() for m in params.allowed_modalities),
    )


def run(params: Params) -> IngestSummary:
    """Discover the source's files, read and de-identify them, write the canonical dataset."""
    p = params.ingest
    discovery = discover(p.source, Path(p.source_dir), p.labels_csv, p.site)
    return ingest(
        discovery,
        Path(params.paths.ingest_dir),
        image_size=p.image_size,
        salt=salt_from_env(synthetic=p.source == "synthetic"),
        limits=limits_from(p),
        workers=p.workers,
    )


def main() -> None:
    run_stage("ingest", run)


if __name__ == "__main__":
    main()
