"""``synth`` stage: generate the embedded default dataset, one folder per synthetic site."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cxr_triage.atomic import replace_dir_atomically, temporary_dir_for
from cxr_triage.config import Params
from cxr_triage.data.synth import generate_dataset
from cxr_triage.stages._entry import run_stage

log = logging.getLogger(__name__)


def run(params: Params) -> dict[str, int]:
    """Write ``paths.synth_dir/<site>/`` (DICOM files + ChestX-ray14-style labels.csv) per site."""
    out_dir = Path(params.paths.synth_dir)
    tmp = temporary_dir_for(out_dir)
    try:
        counts = {}
        for site, n in params.synth.sites.items():
            table = generate_dataset(
                tmp / site,
                n=n,
                site=site,
                seed=params.seed,
                workers=params.synth.workers or os.cpu_count() or 1,
            )
            counts[site] = len(table)
            log.info("synth: %d images for site %s", len(table), site)
        replace_dir_atomically(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def main() -> None:
    run_stage("synth", run)


if __name__ == "__main__":
    main()
