"""Logging set-up for entry points (CLI, stages); library modules only call getLogger."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["configure_logging"]


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted, not when set up.

    Test runners (typer's CliRunner) swap ``sys.stderr`` for a buffer they close afterwards; a
    handler bound to that buffer would fail every later log call with "I/O operation on closed
    file".
    """

    @property
    def stream(self):  # noqa: ANN201 - logging.StreamHandler's attribute
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__ assigns it
        pass


def configure_logging(level: str | None = None) -> None:
    """One stderr handler; level from the argument, ``CXR_TRIAGE_LOG_LEVEL`` or INFO."""
    level = (level or os.environ.get("CXR_TRIAGE_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[_CurrentStderrHandler()],
        force=True,
    )
