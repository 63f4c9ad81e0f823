"""Checks the service makes before it takes requests: where its prediction log is.

A log inside the BentoML store or the Bento being served is deleted with the Bento, taking the
audit trail along: the service refuses to start (:class:`~cxr_triage.errors.ConfigError` with
what to do). A log that cannot be *written* (read-only or full disk) is not refused here: the
service starts and answers 503 ``prediction_log_unavailable`` until the disk is back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cxr_triage.errors import ConfigError

__all__ = ["check_log_location"]

_HOW_TO_MOVE = (
    "set CXR_TRIAGE_STATE_DIR (or CXR_TRIAGE_PREDICTION_LOG) to a folder outside it; the "
    "default is ~/.local/state/cxr-triage"
)


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_log_location(log_path: Path, artifacts: Mapping[str, Path | None]) -> None:
    """Refuse a prediction log inside an artifact folder (store, Bento, model package).

    Args:
        log_path: the prediction log file.
        artifacts: what each folder is (for the message) -> the folder; None entries are
            skipped.

    Raises:
        ConfigError: the log is inside one of them.
    """
    for what, folder in artifacts.items():
        if folder is not None and _within(log_path, folder):
            raise ConfigError(
                f"the prediction log {log_path} is inside {what} ({folder}): it would be "
                f"replaced or deleted with it, taking the audit log along; {_HOW_TO_MOVE}"
            )
