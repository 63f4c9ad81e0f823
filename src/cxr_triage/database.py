"""SQLite the way operations state uses it (the prediction log, the DICOM listener's spool).

WAL mode, so readers never block the writer and several processes can share a file;
``synchronous=FULL``, so a committed transaction survives a power loss; one connection per
thread (sqlite3 connections must not cross threads); and transactions that take the write
lock up front (``BEGIN IMMEDIATE``), so concurrent writers queue on the busy timeout instead of
failing with "database is locked" half-way through.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from cxr_triage.errors import CxrError

__all__ = ["BUSY_TIMEOUT_MS", "Database"]

BUSY_TIMEOUT_MS = 30_000


class Database:
    """One SQLite file, a connection per thread.

    Args:
        path: the database file (its folder must exist).
        unavailable: turns a failure to open the file into the error to raise (its message
            should say which setting points at the file).
        row_factory: e.g. ``sqlite3.Row``; default tuples.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        unavailable: Callable[[sqlite3.Error], CxrError],
        row_factory: type | None = None,
    ) -> None:
        self.path = Path(path)
        self._unavailable = unavailable
        self._row_factory = row_factory
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use).

        Raises:
            CxrError: from ``unavailable``, when the file cannot be opened.
        """
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
                )
                if self._row_factory is not None:
                    db.row_factory = self._row_factory
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc
            self._local.db = db
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (the next use opens a new one)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
