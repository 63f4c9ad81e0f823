"""``synth`` stage: generate the embedded default dataset, one folder per synthetic site.

With a real source (``ingest.source`` other than ``synthetic``) nothing is generated: the
stage writes only a note saying why, so ``dvc repro`` on real data does not spend minutes on a
synthetic set no stage reads (and switching back restores the set from DVC's cache).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cxr_triage.atomic import atomic_dir
from cxr_triage.config import Params
from cxr_triage.data.synth import SynthConfig, generate_dataset
from cxr_triage.stages._entry import run_stage

log = logging.getLogger(__name__)
SKIPPED_NOTE = "NOT_GENERATED.txt"


def run(params: Params) -> dict[str, int]:
    """Write ``paths.synth_dir/<site>/`` (DICOM files + ChestX-ray14-style labels.csv) per site."""
    out_dir = Path(params.paths.synth_dir)
    config = SynthConfig.from_params(params.synth)
    counts: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        if params.ingest.source != "synthetic":
            (tmp / SKIPPED_NOTE).write_text(
                f"Not generated: ingest.source is {params.ingest.source!r}; the synthetic set is "
                "built only for ingest.source: synthetic.\n",
                encoding="utf-8",
            )
            log.info("synth: skipped (ingest.source is %s)", params.ingest.source)
            return counts
        for site, n in params.synth.sites.items():
            table = generate_dataset(
                tmp / site,
                n=n,
                site=site,
                seed=params.seed,
                config=config,
                workers=params.synth.workers or os.cpu_count() or 1,
            )
            counts[site] = len(table)
            log.info("synth: %d images for site %s", len(table), site)
    return counts


def main() -> None:
    run_stage("synth", run)


if __name__ == "__main__":
    main()
