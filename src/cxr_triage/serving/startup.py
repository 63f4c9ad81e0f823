"""Checks the service makes before it takes requests: where its prediction log is, and that the
log is a sound SQLite database.

Both refuse to start (:class:`~cxr_triage.errors.ConfigError` with what to do), because both
are operator mistakes that would otherwise lose the audit trail silently: a log inside the
BentoML store or the Bento being served is deleted with the Bento; a corrupt log would answer
every request 503 (or lose rows) until someone looks. A log that cannot be *written* (read-only
or full disk) is not refused here: the service starts and answers 503
``prediction_log_unavailable`` until the disk is back.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from cxr_triage.errors import ConfigError

__all__ = ["check_log_integrity", "check_log_location"]

log = logging.getLogger(__name__)

_SQLITE_HEADER = b"SQLite format 3\x00"
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


def check_log_integrity(log_path: Path) -> None:
    """Refuse a prediction log that exists but is not a sound SQLite database.

    Reads the file's header, then runs SQLite's ``PRAGMA quick_check`` on a read-only
    connection (it reads every page: about a second per few hundred MB). A missing or empty
    file passes (the service creates it); so does one it cannot open for another reason
    (permissions, a read-only folder without the WAL index): those surface as 503s.

    Raises:
        ConfigError: the file is not SQLite, or SQLite finds it corrupt.
    """
    try:
        size = log_path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot inspect the prediction log %s: %s", log_path, exc)
        return
    if size == 0:
        return
    try:
        with log_path.open("rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        log.warning("cannot read the prediction log %s: %s", log_path, exc)
        return
    if header != _SQLITE_HEADER:
        _corrupt(log_path, "it is not an SQLite database")
    try:
        db = sqlite3.connect(f"{log_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            result = [row[0] for row in db.execute("PRAGMA quick_check")]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            _corrupt(log_path, str(exc))
        log.warning("cannot check the prediction log %s: %s", log_path, exc)
        return
    if result != ["ok"]:
        _corrupt(log_path, "; ".join(map(str, result[:3])))


def _corrupt(log_path: Path, detail: str) -> None:
    raise ConfigError(
        f"the prediction log {log_path} is corrupt ({detail}); the service will not append to "
        f"it. Move it (and any {log_path.name}-wal, {log_path.name}-shm beside it) aside for "
        "the audit, recover what SQLite can (`sqlite3 OLD .recover | sqlite3 NEW`), then start "
        "the service again: it creates a new log"
    )
