"""The prediction log: one row of PHI-free monitoring features per acknowledged prediction.

SQLite in WAL mode: many readers and one writer at a time across processes (service workers,
``cxr-triage monitor``), and it survives restarts. A prediction is appended, and the
transaction committed with ``synchronous=FULL``, *before* the service answers, so every
acknowledged prediction is on disk even if the machine loses power right after.

Rows are stored as their monitoring columns (see :mod:`cxr_triage.inference.features`) plus
``request_id``, ``ts`` (UTC, ISO 8601), ``model_tag`` and ``threshold``. Columns are added when
a row brings a new one (a package with more summary components), never removed.

The same file holds the radiologists' fed-back reads in their own table ``feedback`` (one per
prediction key: ``request_id``, or ``study_key`` for a logged study digest; a later read
replaces an earlier one), see :mod:`cxr_triage.inference.feedback`. :meth:`PredictionLog.read`
joins them to a window on request (``true_label``, ``true_findings``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_triage.atomic import atomic_path
from cxr_triage.database import Database
from cxr_triage.errors import ConfigError, DataError
from cxr_triage.state import PREDICTION_LOG_ENV, state_layout

__all__ = [
    "KEY_KINDS",
    "LOG_PATH_ENV",
    "PredictionLog",
    "backup_log",
    "normalise_time",
    "utc_now",
]

LOG_PATH_ENV = PREDICTION_LOG_ENV
_TABLE = "predictions"
_FIXED = {
    "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "request_id": "TEXT NOT NULL",
    "ts": "TEXT NOT NULL",
    "model_tag": "TEXT NOT NULL",
    "threshold": "REAL NOT NULL",
}
_FEEDBACK = "feedback"
_FEEDBACK_COLUMNS = (
    "id INTEGER PRIMARY KEY AUTOINCREMENT, key_kind TEXT NOT NULL, key TEXT NOT NULL, "
    "label TEXT NOT NULL, findings TEXT NOT NULL DEFAULT '', read_at TEXT, "
    "received_at TEXT NOT NULL, UNIQUE (key_kind, key)"
)
KEY_KINDS = ("request_id", "study_key")  # what a read is matched by (a column of the log)
_CHUNK = 500  # keys per query (SQLite limits the number of parameters)


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
        self._db = Database(
            self.path,
            lambda exc: ConfigError(
                f"cannot open the prediction log {self.path}: {exc}; "
                f"set {LOG_PATH_ENV} to a writable file path"
            ),
        )
        with self._transaction() as db:
            columns = ", ".join(f"{name} {kind}" for name, kind in _FIXED.items())
            db.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} ({columns})")
            db.execute(f"CREATE INDEX IF NOT EXISTS {_TABLE}_ts ON {_TABLE} (ts)")
            db.execute(f"CREATE INDEX IF NOT EXISTS {_TABLE}_request ON {_TABLE} (request_id)")
            db.execute(f"CREATE TABLE IF NOT EXISTS {_FEEDBACK} ({_FEEDBACK_COLUMNS})")

    def _connection(self) -> sqlite3.Connection:
        return self._db.connection()

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.transaction()

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
        with_feedback: bool = False,
    ) -> pd.DataFrame:
        """Rows in time order: those with ``since <= ts < until``, or the ``last`` N of them.

        Args:
            since, until: ISO 8601 times (UTC; a date alone means its midnight).
            last: keep only the most recent N rows of the window.
            model_tag: only predictions of this model.
            with_feedback: add each row's fed-back read, ``true_label`` and ``true_findings``
                (None where none came back; a read by request id wins over one by study).
        """
        where, args = [], []
        for op, value in ((">=", since), ("<", until)):
            if value is not None:
                where.append(f"ts {op} ?")
                args.append(normalise_time(value))
        if model_tag is not None:
            where.append("model_tag = ?")
            args.append(model_tag)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        if last is None:
            query = f"SELECT * FROM {_TABLE}{clause}"
        else:
            query = f"SELECT * FROM {_TABLE}{clause} ORDER BY id DESC LIMIT ?"
            args.append(int(last))
        if with_feedback:
            query = self._with_feedback(query)
        ordered = f"SELECT * FROM ({query}) ORDER BY id"
        return pd.read_sql_query(ordered, self._connection(), params=args)

    def _with_feedback(self, window: str) -> str:
        """The window's query with each row's read joined (by request id, else by study)."""
        db = self._connection()
        joins = [("request_id", "r")]
        if "study_key" in self._existing_columns(db):
            joins.append(("study_key", "s"))
        on = " ".join(
            f"LEFT JOIN {_FEEDBACK} {a} ON {a}.key_kind = '{kind}' AND {a}.key = p.{kind}"
            for kind, a in joins
        )
        label = ", ".join(f"{a}.label" for _, a in joins)
        findings = ", ".join(f"{a}.findings" for _, a in joins)
        return (
            f"SELECT p.*, COALESCE({label}, NULL) AS true_label, "
            f"COALESCE({findings}, NULL) AS true_findings FROM ({window}) p {on}"
        )

    def record_feedback(self, reads: Sequence[Mapping[str, Any]]) -> int:
        """Store reads (``key_kind``, ``key``, ``label``, ``findings``, ``read_at``), all or none.

        A read of a key already read replaces it. Returns the number of reads written.

        Raises:
            DataError: a ``key_kind`` that is not one of :data:`KEY_KINDS`.
        """
        bad = {r["key_kind"] for r in reads} - set(KEY_KINDS)
        if bad:
            raise DataError(f"feedback keys must be one of {KEY_KINDS}, got {sorted(bad)}")
        received = utc_now()
        with self._transaction() as db:
            db.executemany(
                f"INSERT INTO {_FEEDBACK} (key_kind, key, label, findings, read_at, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_kind, key) DO UPDATE SET "
                "label = excluded.label, findings = excluded.findings, "
                "read_at = excluded.read_at, received_at = excluded.received_at",
                [
                    (r["key_kind"], r["key"], r["label"], r.get("findings") or "",
                     r.get("read_at"), received)
                    for r in reads
                ],
            )  # fmt: skip
        return len(reads)

    def matched_keys(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """The ``(key_kind, key)`` pairs that name a logged prediction."""
        db = self._connection()
        columns = self._existing_columns(db)
        found: set[tuple[str, str]] = set()
        for kind in KEY_KINDS:
            wanted = sorted({key for k, key in keys if k == kind})
            if kind not in columns:
                continue
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ", ".join("?" for _ in chunk)
                rows = db.execute(
                    f"SELECT DISTINCT {kind} FROM {_TABLE} WHERE {kind} IN ({marks})", chunk
                )
                found.update((kind, row[0]) for row in rows)
        return found

    def delete_before(self, cutoff: str) -> tuple[int, int]:
        """Delete predictions logged, and reads received, before ``cutoff`` (retention).

        Args:
            cutoff: an ISO 8601 time (UTC when no offset).

        Returns:
            The numbers of predictions and of reads deleted (in one transaction).
        """
        moment = normalise_time(cutoff)
        with self._transaction() as db:
            predictions = db.execute(f"DELETE FROM {_TABLE} WHERE ts < ?", (moment,)).rowcount
            reads = db.execute(
                f"DELETE FROM {_FEEDBACK} WHERE received_at < ?", (moment,)
            ).rowcount
        return predictions, reads

    def backup(self, dest: str | os.PathLike[str]) -> Path:
        """Copy the log (predictions and reads) to ``dest`` with SQLite's online backup API.

        Consistent while the service keeps writing (pages changed during the copy are copied
        again); ``dest`` appears whole or not at all.

        Raises:
            ConfigError: ``dest`` cannot be written.
        """
        dest = Path(dest)
        try:
            with atomic_path(dest, fsync=True) as tmp:
                target = sqlite3.connect(tmp)
                try:
                    self._connection().backup(target)
                finally:
                    target.close()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot write the backup {dest}: {exc}") from exc
        return dest

    def feedback_count(self) -> int:
        return int(self._connection().execute(f"SELECT COUNT(*) FROM {_FEEDBACK}").fetchone()[0])

    def count(self) -> int:
        return int(self._connection().execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def backup_log(
    log_path: str | os.PathLike[str] | None = None,
    dest: str | os.PathLike[str] | None = None,
) -> tuple[Path, int, int]:
    """Back up the prediction log (with its fed-back reads) while the service may be writing.

    Args:
        log_path: the log (default: the state folder's).
        dest: a file (a name with a suffix, e.g. ``.sqlite``), or a folder to put
            ``predictions-<UTC time>.sqlite`` in (default: the state folder's ``backups/``).

    Returns:
        The backup file, and the predictions and reads it holds.

    Raises:
        DataError: there is no log to back up.
        ConfigError: the backup cannot be written.
    """
    source = Path(log_path) if log_path else state_layout().prediction_log
    if not source.is_file():
        raise DataError(f"no prediction log at {source}: nothing to back up (pass --log PATH)")
    target = Path(dest) if dest else state_layout().backup_dir
    if target.is_dir() or not target.suffix:  # a folder (created if need be)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = target / f"predictions-{stamp}.sqlite"
    log = PredictionLog(source)
    try:
        log.backup(target)
    finally:
        log.close()
    copy = sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True)
    try:  # what the copy holds, read back from it
        counts = [
            copy.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in (_TABLE, _FEEDBACK)
        ]
    finally:
        copy.close()
    return target, int(counts[0]), int(counts[1])


def _plain(value: Any) -> Any:
    """numpy scalars to Python (sqlite3 stores only builtins)."""
    return value.item() if hasattr(value, "item") else value


def normalise_time(value: str) -> str:
    """An ISO 8601 time as the log stores it (UTC, microseconds); no offset means UTC.

    Raises:
        ConfigError: not ISO 8601.
    """
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(
            f"invalid time {value!r}; use ISO 8601, e.g. 2026-11-23 or 2026-11-23T08:00:00+00:00"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
