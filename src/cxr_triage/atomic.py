"""Outputs appear whole or not at all: build in a temporary sibling, then rename into place.

A killed run leaves the previous output untouched; its temporary folder (named with the owner's
pid) is removed by the next run once that pid is gone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "remove_stale_tmp_dirs",
    "replace_dir_atomically",
    "temporary_dir_for",
    "write_json_atomically",
]

log = logging.getLogger(__name__)


def _tmp_prefix(out_dir: Path) -> str:
    # The owner's pid is part of the name so that a later run can tell a killed run's leftovers
    # from a concurrent run's work in progress.
    return f".{out_dir.name}.tmp-{os.getpid()}-"


def remove_stale_tmp_dirs(out_dir: Path) -> None:
    """Delete temporary folders that killed runs left beside ``out_dir``."""
    for tmp in out_dir.parent.glob(f".{out_dir.name}.tmp-*-*"):
        pid = tmp.name.split(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            log.info("removing %s left by an interrupted run", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_dir_for(out_dir: Path) -> Path:
    """A fresh temporary sibling of ``out_dir`` to build an output in (stale ones removed)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_dirs(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out_dir), dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the output it becomes is not
    return tmp


def replace_dir_atomically(tmp_dir: Path, out_dir: Path) -> None:
    """Move a finished ``tmp_dir`` to ``out_dir``, replacing any previous output."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        out_dir.rename(old)
    tmp_dir.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)


def write_json_atomically(path: Path, data: object) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(value: object) -> object:
    """numpy scalars and paths, which stage summaries often hold, as plain JSON values."""
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
