"""Logging set-up for entry points (CLI, stages); library modules only call getLogger."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["configure_logging"]


def configure_logging(level: str | None = None) -> None:
    """One stderr handler; level from the argument, ``CXR_TRIAGE_LOG_LEVEL`` or INFO."""
    level = (level or os.environ.get("CXR_TRIAGE_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
