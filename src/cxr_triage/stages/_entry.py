"""What every stage's ``main()`` shares: logging, params, errors as one line (no traceback)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cxr_triage.config import Params, load_params
from cxr_triage.errors import CxrError
from cxr_triage.logs import configure_logging
from cxr_triage.numerics import run_pinned

__all__ = ["data_note", "run_stage"]


def run_stage(name: str, run: Callable[[Params], object]) -> None:
    """Run a stage from ``params.yaml`` (or ``$CXR_TRIAGE_PARAMS``); exit 1 on a user error.

    The process first re-executes itself with the CPU instruction-set pins of
    :mod:`cxr_triage.numerics` (once; ``CXR_TRIAGE_CPU_ISA=native`` skips it), so a stage's
    numbers do not depend on the machine's vector width.
    """
    run_pinned(f"cxr_triage.stages.{name}")
    configure_logging()
    log = logging.getLogger(f"cxr_triage.stages.{name}")
    try:
        run(load_params(os.environ.get("CXR_TRIAGE_PARAMS", "params.yaml")))
    except CxrError as exc:
        log.error("%s failed: %s", name, exc)
        sys.exit(1)


def data_note(params: Params) -> str:
    """What the figures were computed on, for every report and plot (synthetic is a stand-in)."""
    if params.ingest.source == "synthetic":
        return "synthetic stand-in data, not real patients"
    return f"source: {params.ingest.source} ({Path(params.ingest.source_dir).name})"
