"""Outputs appear whole or not at all: build in a temporary sibling, then rename into place.

A killed run leaves the previous output untouched; its temporary folder (named with the owner's
pid) is removed by the next run once that pid is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_dir",
    "atomic_path",
    "remove_stale_tmp_dirs",
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


def _temporary_dir_for(out_dir: Path) -> Path:
    """A fresh temporary sibling of ``out_dir`` to build an output in (stale ones removed)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_dirs(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out_dir), dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the output it becomes is not
    return tmp


def _replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    """Move a finished ``tmp_dir`` to ``out_dir``, replacing any previous output."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        out_dir.rename(old)
    tmp_dir.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out_dir`` to fill; on success it becomes ``out_dir``.

    The previous ``out_dir`` (if any) is replaced as a whole only when the block finishes; an
    exception (or a kill) leaves it untouched and the temporary folder is removed (a killed
    run's folder by the next run, see :func:`remove_stale_tmp_dirs`).

    Example::

        with atomic_dir("data/ingest") as tmp:
            write_manifest(tmp / "manifest.csv")
    """
    out_dir = Path(out_dir)
    tmp = _temporary_dir_for(out_dir)
    try:
        yield tmp
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path`` at once.

    Readers never see half a file, and a failed or killed write leaves the old file as it was.
    The temporary name keeps the suffix (``.npy``, ``.png``) for writers that look at it.

    Args:
        path: the file to (re)place.
        fsync: flush the file to disk before the rename (checkpoints that must survive a crash).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomically(path: Path, data: object) -> None:
    """Write JSON so that readers never see half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: object) -> object:
    """numpy scalars and paths, which stage summaries often hold, as plain JSON values."""
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
