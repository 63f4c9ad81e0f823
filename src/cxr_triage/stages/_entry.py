"""What every stage's ``main()`` shares: logging, params, errors as one line (no traceback)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from cxr_triage.config import Params, load_params
from cxr_triage.errors import CxrError
from cxr_triage.logs import configure_logging

__all__ = ["run_stage"]


def run_stage(name: str, run: Callable[[Params], object]) -> None:
    """Run a stage from ``params.yaml`` (or ``$CXR_TRIAGE_PARAMS``); exit 1 on a user error."""
    configure_logging()
    log = logging.getLogger(f"cxr_triage.stages.{name}")
    try:
        run(load_params(os.environ.get("CXR_TRIAGE_PARAMS", "params.yaml")))
    except CxrError as exc:
        log.error("%s failed: %s", name, exc)
        sys.exit(1)
