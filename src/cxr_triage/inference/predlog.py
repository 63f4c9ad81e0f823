"""The prediction log: one row of PHI-free monitoring features per acknowledged prediction.

SQLite in WAL mode: many readers and one writer at a time across processes (service workers,
``cxr-triage monitor``), and it survives restarts. A prediction is appended, and the
transaction committed with ``synchronous=FULL``, *before* the service answers, so every
acknowledged prediction is on disk even if the machine loses power right after.

Rows are stored as their monitoring columns (see :mod:`cxr_triage.inference.features`) plus
``request_id``, ``ts`` (UTC, ISO 8601), ``model_tag`` and ``threshold``. Columns are added when
a row brings a new one (a package with more summary components), never removed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_triage.errors import ConfigError, DataError
from cxr_triage.state import PREDICTION_LOG_ENV, state_layout

__all__ = ["LOG_PATH_ENV", "PredictionLog", "utc_now"]

LOG_PATH_ENV = PREDICTION_LOG_ENV
_TABLE = "predictions"
_FIXED = {
    "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "request_id": "TEXT NOT NULL",
    "ts": "TEXT NOT NULL",
    "model_tag": "TEXT NOT NULL",
    "threshold": "REAL NOT NULL",
}
_BUSY_TIMEOUT_MS = 30_000


def utc_now() -> str:
    """The current time as the log stores it (UTC, ISO 8601, microseconds)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _sql_type(value: Any) -> str:
    if isinstance(value, bool | int):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    return "TEXT"


def _quote(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise DataError(f"invalid prediction log column name {name!r}")
    return f'"{name}"'


class PredictionLog:
    """Append-only log of predictions in a SQLite database.

    Args:
        path: the database file (created with its folder); default: the state folder's
            (:func:`cxr_triage.state.state_layout`).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else state_layout().prediction_log
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the prediction log folder {self.path.parent}: {exc}; "
                f"set {LOG_PATH_ENV} to a writable path"
            ) from exc
        self._local = threading.local()
        with self._transaction() as db:
            columns = ", ".join(f"{name} {kind}" for name, kind in _FIXED.items())
            db.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} ({columns})")
            db.execute(f"CREATE INDEX IF NOT EXISTS {_TABLE}_ts ON {_TABLE} (ts)")
            db.execute(f"CREATE INDEX IF NOT EXISTS {_TABLE}_request ON {_TABLE} (request_id)")

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(
                    self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            except sqlite3.Error as exc:
                raise ConfigError(
                    f"cannot open the prediction log {self.path}: {exc}; "
                    f"set {LOG_PATH_ENV} to a writable file path"
                ) from exc
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        # IMMEDIATE takes the write lock up front, so concurrent writers queue on busy_timeout
        # instead of failing with "database is locked" half-way through.
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _existing_columns(self, db: sqlite3.Connection) -> set[str]:
        return {row[1] for row in db.execute(f"PRAGMA table_info({_TABLE})")}

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows (each with ``request_id``, ``model_tag``, ``threshold`` and features).

        The rows are committed together (all or none) before this returns. ``ts`` defaults to
        now. Unknown columns are added to the table.
        """
        if not rows:
            return
        stamped = [{"ts": utc_now(), **row} for row in rows]
        names = list(dict.fromkeys(k for row in stamped for k in row))
        missing = [k for k in ("request_id", "model_tag", "threshold") if k not in names]
        if missing:
            raise DataError(f"prediction log rows need {', '.join(missing)}")
        with self._transaction() as db:
            existing = self._existing_columns(db)
            for name in names:
                if name not in existing:
                    sample = next((r[name] for r in stamped if r.get(name) is not None), "")
                    db.execute(
                        f"ALTER TABLE {_TABLE} ADD COLUMN {_quote(name)} {_sql_type(sample)}"
                    )
            db.executemany(
                f"INSERT INTO {_TABLE} ({', '.join(map(_quote, names))}) "
                f"VALUES ({', '.join('?' for _ in names)})",
                [tuple(_plain(row.get(n)) for n in names) for row in stamped],
            )

    def read(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        last: int | None = None,
        model_tag: str | None = None,
    ) -> pd.DataFrame:
        """Rows in time order: those with ``since <= ts < until``, or the ``last`` N of them.

        Args:
            since, until: ISO 8601 times (UTC; a date alone means its midnight).
            last: keep only the most recent N rows of the window.
            model_tag: only predictions of this model.
        """
        where, args = [], []
        for op, value in ((">=", since), ("<", until)):
            if value is not None:
                where.append(f"ts {op} ?")
                args.append(_normalise_time(value))
        if model_tag is not None:
            where.append("model_tag = ?")
            args.append(model_tag)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        if last is None:
            query = f"SELECT * FROM {_TABLE}{clause} ORDER BY id"
        else:
            query = (
                f"SELECT * FROM (SELECT * FROM {_TABLE}{clause} ORDER BY id DESC LIMIT ?) "
                "ORDER BY id"
            )
            args.append(int(last))
        return pd.read_sql_query(query, self._connection(), params=args)

    def existing_request_ids(self, request_ids: Sequence[str]) -> set[str]:
        """Which of ``request_ids`` are already logged (a consumer that may retry after a
        crash, like the DICOM listener's worker, appends each prediction once)."""
        found: set[str] = set()
        ids = list(dict.fromkeys(request_ids))
        for start in range(0, len(ids), 500):  # SQLite's default limit on bound parameters
            chunk = ids[start : start + 500]
            rows = self._connection().execute(
                f"SELECT request_id FROM {_TABLE} WHERE request_id IN "
                f"({', '.join('?' for _ in chunk)})",
                chunk,
            )
            found.update(row[0] for row in rows)
        return found

    def count(self) -> int:
        return int(self._connection().execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0])

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _plain(value: Any) -> Any:
    """numpy scalars to Python (sqlite3 stores only builtins)."""
    return value.item() if hasattr(value, "item") else value


def _normalise_time(value: str) -> str:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(
            f"invalid time {value!r}; use ISO 8601, e.g. 2026-11-23 or 2026-11-23T08:00:00+00:00"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
