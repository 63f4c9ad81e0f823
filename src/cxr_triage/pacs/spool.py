"""The spool: received instances on disk, and the state of their triage and results, durably.

Layout (``$CXR_TRIAGE_STATE_DIR/spool`` by default)::

    spool/
      incoming/<key>.dcm    an instance as received (the sender's bytes, Part 10), until triaged
                            and ``retention_hours`` have passed
      headers/<key>.dcm     the header of a triaged instance (no pixel data), kept for the study
                            window so a late instance can supersede the study's result
      outbox/<uid>.dcm      a result (SR, optional secondary capture) until every destination
                            has it and ``retention_hours`` have passed
      state.sqlite          instances, studies, results, deliveries, attempts and events
      worker.lock           held by the one process that triages and sends

``<key>`` is the keyed digest of the SOP Instance UID (:meth:`Pseudonymiser.image`, the
``image_id`` the ingest stage gives the same instance) and studies are keyed by the digest of
the Study Instance UID (:meth:`Pseudonymiser.study`): the database and every log line hold
pseudonyms only. Identifiers live in the DICOM files alone, where the PACS needs them.

An instance is *acknowledged* when :meth:`Spool.store` returns: its file was written to a
temporary name, flushed and ``fsync``-ed, renamed into place, the folder ``fsync``-ed, and its
row committed with ``synchronous=FULL``. A file without a row is an instance whose sender got no
Success (the process died in between): :meth:`Spool.sweep` deletes it at the next start, and
the sender, which saw no Success, sends it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from cxr_triage.data.deid import Pseudonymiser
from cxr_triage.database import Database
from cxr_triage.errors import ConfigError, CxrError

__all__ = [
    "Delivery",
    "InstanceRow",
    "ResultRow",
    "Spool",
    "SpoolBusyError",
    "SpoolUnavailableError",
    "StoreOutcome",
    "part10_bytes",
    "write_durably",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    key TEXT PRIMARY KEY,           -- digest of the SOP Instance UID
    study TEXT NOT NULL,            -- digest of the Study Instance UID
    sop_class TEXT NOT NULL,        -- a standard UID (CR, DX, SC storage)
    transfer_syntax TEXT,
    source TEXT NOT NULL,           -- dicom | stow | pull
    calling_ae TEXT,
    site TEXT,
    received_at REAL NOT NULL,
    state TEXT NOT NULL,            -- received | triaged | refused
    reason TEXT,
    message TEXT,
    prob REAL,
    request_id TEXT,
    triaged_at REAL,
    result_id INTEGER,
    file_deleted INTEGER NOT NULL DEFAULT 0,
    header_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_state ON instances (state);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study);
CREATE TABLE IF NOT EXISTS studies (
    study TEXT PRIMARY KEY,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study TEXT NOT NULL,
    version INTEGER NOT NULL,
    sr_uid TEXT NOT NULL UNIQUE,    -- generated here, fixed before the first send
    series_uid TEXT NOT NULL,
    files TEXT NOT NULL,            -- outbox file names, comma-separated (SR first)
    prob REAL NOT NULL,
    label TEXT NOT NULL,
    rule TEXT NOT NULL,
    n_images INTEGER NOT NULL,
    model_tag TEXT NOT NULL,
    created_at REAL NOT NULL,
    superseded_by INTEGER,
    files_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS deliveries (
    result_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | sent | cancelled
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    sent_at REAL,
    last_error TEXT,
    PRIMARY KEY (result_id, destination)
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    at REAL NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,             -- e.g. association_rejected, store_failed, duplicate
    detail TEXT
);
"""


class SpoolUnavailableError(CxrError):
    """The spool cannot take an instance (disk full, not writable): answer a failure status."""


class SpoolBusyError(CxrError):
    """Another process already triages this spool."""


@dataclass(frozen=True)
class StoreOutcome:
    """What :meth:`Spool.store` did: ``stored`` (new), ``duplicate`` or ``resent`` (refused
    before, judged again)."""

    key: str
    study: str
    status: str


@dataclass(frozen=True)
class InstanceRow:
    """One spooled instance, as the database has it (pseudonyms only)."""

    key: str
    study: str
    sop_class: str
    source: str
    calling_ae: str | None
    site: str | None
    received_at: float
    state: str
    reason: str | None
    prob: float | None
    result_id: int | None


@dataclass(frozen=True)
class ResultRow:
    """One study result (an SR and its companions in the outbox)."""

    id: int
    study: str
    version: int
    sr_uid: str
    series_uid: str
    files: tuple[str, ...]
    prob: float
    label: str
    n_images: int
    model_tag: str
    created_at: float
    superseded_by: int | None


@dataclass(frozen=True)
class Delivery:
    """One result to one destination."""

    result_id: int
    destination: str
    state: str
    attempts: int
    next_at: float
    sent_at: float | None
    last_error: str | None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _synced_tmp(folder: Path, data: bytes) -> str:
    """A temporary file in ``folder`` holding ``data``, flushed to disk; its path."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it is complete on disk or absent, even after a crash.

    A temporary file in the same folder is written, flushed and ``fsync``-ed, renamed over
    ``path``, and the folder ``fsync``-ed so the rename itself survives a power loss.

    Raises:
        OSError: the disk is full or the folder not writable (nothing is left behind).
    """
    tmp = _synced_tmp(path.parent, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _from_row(cls: type[T], row: sqlite3.Row) -> T:
    """A row as the dataclass whose fields name its columns."""
    return cls(**{f.name: row[f.name] for f in fields(cls)})


def part10_bytes(ds: Any) -> bytes:
    """A pydicom data set as the bytes of a DICOM Part 10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Spool:
    """Spooled instances and the state of their triage, results and deliveries.

    Safe to use from many threads (one SQLite connection each) and processes (SQLite WAL;
    only the holder of :meth:`worker_lock` triages and sends).

    Args:
        root: the spool folder (created with its sub-folders).
        pseudonymiser: the keyed digests of UIDs (:func:`cxr_triage.data.deid.salt_from_env`);
            needed to store instances, not to read the state.

    Raises:
        ConfigError: the folder cannot be created or the database opened.
    """

    def __init__(
        self, root: str | os.PathLike[str], pseudonymiser: Pseudonymiser | None = None
    ) -> None:
        self.root = Path(root)
        self.pseudonymiser = pseudonymiser
        self.incoming = self.root / "incoming"
        self.headers = self.root / "headers"
        self.outbox = self.root / "outbox"
        self.db_path = self.root / "state.sqlite"
        try:
            for folder in (self.incoming, self.headers, self.outbox):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the spool {self.root}: {exc}; set CXR_TRIAGE_PACS_SPOOL_DIR "
                "(or CXR_TRIAGE_STATE_DIR) to a writable folder"
            ) from exc
        self._db = Database(
            self.db_path,
            lambda exc: ConfigError(f"cannot open the spool database {self.db_path}: {exc}"),
            row_factory=sqlite3.Row,
        )
        self._lock_fd: int | None = None
        try:
            self._connection().executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot set up the spool database {self.db_path}: {exc}") from exc

    # -- database --------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        return self._db.connection()

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.transaction()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(self._connection().execute(sql, args))

    def close(self) -> None:
        """Close this thread's connection and release the worker lock if held."""
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the worker lock -------------------------------------------------------------------

    def worker_lock(self) -> None:
        """Become the one process that triages and sends from this spool.

        Raises:
            SpoolBusyError: another process holds it (its pid is in the message).
        """
        path = self.root / "worker.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SpoolBusyError(
                f"another process (pid {holder}) already triages the spool {self.root}; stop "
                "it first, or give this one another CXR_TRIAGE_PACS_SPOOL_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def worker_lock_holder(self) -> int | None:
        """The pid of the process triaging this spool, or None when nobody does."""
        path = self.root / "worker.lock"
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 32).decode(errors="replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    # -- receiving -------------------------------------------------------------------------

    def _pseudonyms(self) -> Pseudonymiser:
        if self.pseudonymiser is None:
            raise ConfigError("this spool was opened read-only (no pseudonymisation key)")
        return self.pseudonymiser

    def instance_key(self, sop_instance_uid: str) -> str:
        """The pseudonym of an instance: the keyed digest of its SOP Instance UID."""
        return self._pseudonyms().image(str(sop_instance_uid))

    def study_key(self, study_instance_uid: str) -> str:
        """The pseudonym of a study: the keyed digest of its Study Instance UID."""
        return self._pseudonyms().study(str(study_instance_uid))

    def incoming_path(self, key: str) -> Path:
        return self.incoming / f"{key}.dcm"

    def header_path(self, key: str) -> Path:
        return self.headers / f"{key}.dcm"

    def store(
        self,
        data: bytes,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        study_instance_uid: str,
        transfer_syntax: str | None,
        source: str,
        calling_ae: str | None = None,
        site: str | None = None,
    ) -> StoreOutcome:
        """Write one received instance (Part 10 bytes) durably and record it.

        When this returns, the instance is on disk and counted: only then may the sender be
        told Success. An instance whose SOP Instance UID is already spooled or triaged is not
        stored again (``duplicate``); one refused before is replaced and judged again
        (``resent``).

        Raises:
            SpoolUnavailableError: the file or its row could not be written (disk full,
                folder not writable); nothing of it is left behind.
        """
        key = self.instance_key(sop_instance_uid)
        study = self.study_key(study_instance_uid)
        final = self.incoming_path(key)
        existing = self._query("SELECT state FROM instances WHERE key = ?", (key,))
        if existing and existing[0]["state"] != "refused":
            return StoreOutcome(key, study, "duplicate")
        renamed = False
        try:
            tmp = _synced_tmp(self.incoming, data)
            try:
                now = time.time()
                with self._transaction() as db:
                    row = db.execute("SELECT state FROM instances WHERE key = ?", (key,))
                    found = row.fetchone()
                    if found is not None and found["state"] != "refused":
                        status = "duplicate"
                    else:
                        os.replace(tmp, final)
                        renamed = True
                        _fsync_dir(self.incoming)
                        status = "stored" if found is None else "resent"
                        db.execute("DELETE FROM instances WHERE key = ?", (key,))
                        db.execute(
                            "INSERT INTO instances (key, study, sop_class, transfer_syntax, "
                            "source, calling_ae, site, received_at, state) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'received')",
                            (key, study, str(sop_class_uid), transfer_syntax, source,
                             calling_ae, site, now),
                        )  # fmt: skip
                        db.execute(
                            "INSERT INTO studies (study, first_received, last_received) "
                            "VALUES (?, ?, ?) ON CONFLICT(study) DO UPDATE SET "
                            "last_received = excluded.last_received",
                            (study, now, now),
                        )
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except (OSError, sqlite3.Error) as exc:
            if renamed:  # the row was rolled back: the file must not outlive it
                with contextlib.suppress(OSError):
                    final.unlink()
            raise SpoolUnavailableError(f"the spool {self.root} cannot take it: {exc}") from exc
        return StoreOutcome(key, study, status)

    def record_event(self, kind: str, detail: str = "") -> None:
        """Count something that happened outside any instance row (never PHI in ``detail``)."""
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)",
                    (time.time(), kind, detail),
                )
        except sqlite3.Error as exc:  # counting must never turn a refusal into a crash
            log.error("cannot record event %s in %s: %s", kind, self.db_path, exc)

    def sweep(self) -> dict[str, int]:
        """At start: remove what a killed process left that was never acknowledged or built.

        - ``*.part`` temporary files (interrupted writes);
        - ``incoming/`` files without a row (the sender got no Success and will resend);
        - ``outbox/`` files of no result (a result interrupted before it was recorded).

        Returns:
            How many of each were removed.
        """
        removed = {"partial": 0, "unacknowledged": 0, "unrecorded_results": 0}
        for folder in (self.incoming, self.headers, self.outbox):
            for tmp in folder.glob(".*.part"):
                tmp.unlink(missing_ok=True)
                removed["partial"] += 1
        known = {r["key"] for r in self._query("SELECT key FROM instances")}
        for path in self.incoming.glob("*.dcm"):
            if path.stem not in known:
                path.unlink(missing_ok=True)
                removed["unacknowledged"] += 1
        recorded = {
            name
            for r in self._query("SELECT files FROM results")
            for name in r["files"].split(",")
        }
        for path in self.outbox.glob("*.dcm"):
            if path.name not in recorded:
                path.unlink(missing_ok=True)
                removed["unrecorded_results"] += 1
        for kind, n in removed.items():
            if n:
                self.record_event(f"swept_{kind}", str(n))
        return removed

    # -- triage ----------------------------------------------------------------------------

    def pending(self, limit: int) -> list[InstanceRow]:
        """Instances received and not yet triaged, oldest first."""
        rows = self._query(
            "SELECT * FROM instances WHERE state = 'received' ORDER BY received_at LIMIT ?",
            (limit,),
        )
        return [_from_row(InstanceRow, r) for r in rows]

    def instances(self, state: str | None = None) -> list[InstanceRow]:
        """Every instance (or those in ``state``), oldest first."""
        sql = "SELECT * FROM instances" + (" WHERE state = ?" if state else "")
        rows = self._query(sql + " ORDER BY received_at", (state,) if state else ())
        return [_from_row(InstanceRow, r) for r in rows]

    def mark_outcomes(
        self,
        triaged: Iterable[tuple[str, float, str]],
        refused: Iterable[tuple[str, str, str]],
    ) -> None:
        """Record a batch's outcomes in one transaction.

        Args:
            triaged: ``(key, probability, prediction log request id)`` per scored instance.
            refused: ``(key, reason, message)`` per refused instance.
        """
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "UPDATE instances SET state = 'triaged', prob = ?, request_id = ?, "
                "triaged_at = ? WHERE key = ?",
                [(prob, rid, now, key) for key, prob, rid in triaged],
            )
            db.executemany(
                "UPDATE instances SET state = 'refused', reason = ?, message = ?, "
                "triaged_at = ? WHERE key = ?",
                [(reason, message, now, key) for key, reason, message in refused],
            )

    def due_studies(self, quiet_seconds: float, now: float | None = None) -> list[str]:
        """Studies to close: triaged instances not in a result, none pending, and nothing
        received for ``quiet_seconds``."""
        now = time.time() if now is None else now
        rows = self._query(
            "SELECT s.study FROM studies s WHERE s.last_received <= ? "
            "AND EXISTS (SELECT 1 FROM instances i WHERE i.study = s.study "
            "            AND i.state = 'triaged' AND i.result_id IS NULL) "
            "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.study = s.study "
            "                AND i.state = 'received') ORDER BY s.last_received",
            (now - quiet_seconds,),
        )
        return [r["study"] for r in rows]

    def last_received_of_open_studies(self) -> float | None:
        """The oldest last-receipt time among studies with triaged instances not yet in a
        result (None when there is none)."""
        rows = self._query(
            "SELECT MIN(s.last_received) AS t FROM studies s WHERE EXISTS ("
            "SELECT 1 FROM instances i WHERE i.study = s.study AND i.state = 'triaged' "
            "AND i.result_id IS NULL)"
        )
        return rows[0]["t"] if rows and rows[0]["t"] is not None else None

    def evaluated_instances(self, study: str) -> list[InstanceRow]:
        """A study's triaged instances whose header is still kept, oldest first."""
        rows = self._query(
            "SELECT * FROM instances WHERE study = ? AND state = 'triaged' "
            "AND header_deleted = 0 ORDER BY received_at",
            (study,),
        )
        return [_from_row(InstanceRow, r) for r in rows]

    # -- results and deliveries ------------------------------------------------------------

    def _result(self, row: sqlite3.Row) -> ResultRow:
        values = {f.name: row[f.name] for f in fields(ResultRow)}
        return ResultRow(**{**values, "files": tuple(row["files"].split(","))})

    def current_result(self, study: str) -> ResultRow | None:
        """The study's latest result (None before its first)."""
        rows = self._query(
            "SELECT * FROM results WHERE study = ? ORDER BY version DESC LIMIT 1", (study,)
        )
        return self._result(rows[0]) if rows else None

    def results(self) -> list[ResultRow]:
        return [self._result(r) for r in self._query("SELECT * FROM results ORDER BY id")]

    def result(self, result_id: int) -> ResultRow:
        return self._result(self._query("SELECT * FROM results WHERE id = ?", (result_id,))[0])

    def add_result(
        self,
        *,
        study: str,
        sr_uid: str,
        series_uid: str,
        files: Sequence[str],
        prob: float,
        label: str,
        rule: str,
        model_tag: str,
        instance_keys: Sequence[str],
        destinations: Sequence[str],
    ) -> ResultRow:
        """Record a study's new result and queue it for every destination, in one transaction.

        The previous result of the study (if any) is marked superseded and its unsent
        deliveries cancelled: the new one covers every instance the old one did.
        """
        now = time.time()
        with self._transaction() as db:
            previous = db.execute(
                "SELECT id, version FROM results WHERE study = ? ORDER BY version DESC LIMIT 1",
                (study,),
            ).fetchone()
            version = 1 if previous is None else previous["version"] + 1
            cursor = db.execute(
                "INSERT INTO results (study, version, sr_uid, series_uid, files, prob, label, "
                "rule, n_images, model_tag, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (study, version, sr_uid, series_uid, ",".join(files), prob, label, rule,
                 len(instance_keys), model_tag, now),
            )  # fmt: skip
            result_id = int(cursor.lastrowid)
            if previous is not None:
                db.execute(
                    "UPDATE results SET superseded_by = ? WHERE id = ?",
                    (result_id, previous["id"]),
                )
                db.execute(
                    "UPDATE deliveries SET state = 'cancelled', last_error = 'superseded' "
                    "WHERE result_id = ? AND state = 'pending'",
                    (previous["id"],),
                )
            db.executemany(
                "UPDATE instances SET result_id = ? WHERE key = ?",
                [(result_id, key) for key in instance_keys],
            )
            db.executemany(
                "INSERT INTO deliveries (result_id, destination, state, next_at) "
                "VALUES (?, ?, 'pending', ?)",
                [(result_id, d, now) for d in destinations],
            )
        return self.result(result_id)

    def due_deliveries(self, now: float | None = None) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest result first."""
        now = time.time() if now is None else now
        rows = self._query(
            "SELECT * FROM deliveries WHERE state = 'pending' AND next_at <= ? "
            "ORDER BY result_id, destination",
            (now,),
        )
        return [_from_row(Delivery, r) for r in rows]

    def deliveries(self, result_id: int | None = None) -> list[Delivery]:
        where, args = (" WHERE result_id = ?", (result_id,)) if result_id else ("", ())
        sql = f"SELECT * FROM deliveries{where} ORDER BY result_id, destination"
        rows = self._query(sql, args)
        return [_from_row(Delivery, r) for r in rows]

    def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due (None when nothing is pending)."""
        row = self._query("SELECT MIN(next_at) AS t FROM deliveries WHERE state = 'pending'")
        return row[0]["t"] if row and row[0]["t"] is not None else None

    def record_attempt(
        self, delivery: Delivery, *, ok: bool, detail: str, next_at: float | None = None
    ) -> None:
        """Record one send attempt and its outcome (``next_at``: the retry time on failure)."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO attempts (result_id, destination, at, ok, detail) "
                "VALUES (?, ?, ?, ?, ?)",
                (delivery.result_id, delivery.destination, now, int(ok), detail),
            )
            if ok:
                db.execute(
                    "UPDATE deliveries SET state = 'sent', attempts = attempts + 1, sent_at = ?, "
                    "last_error = NULL WHERE result_id = ? AND destination = ? "
                    "AND state = 'pending'",
                    (now, delivery.result_id, delivery.destination),
                )
            else:
                db.execute(
                    "UPDATE deliveries SET attempts = attempts + 1, next_at = ?, last_error = ? "
                    "WHERE result_id = ? AND destination = ? AND state = 'pending'",
                    (next_at or now, detail, delivery.result_id, delivery.destination),
                )

    def attempts(self) -> list[dict[str, Any]]:
        """Every send attempt, in order (for tests and status reports)."""
        return [dict(r) for r in self._query("SELECT * FROM attempts ORDER BY id")]

    # -- housekeeping ----------------------------------------------------------------------

    def housekeeping(
        self, *, retention_seconds: float, study_window_seconds: float, now: float | None = None
    ) -> dict[str, int]:
        """Delete what is no longer needed; return how many files of each kind went.

        - a received file, once its instance is refused or part of a result and
          ``retention_seconds`` have passed since its triage (its header was kept first);
        - a header, once ``study_window_seconds`` have passed since its study last received;
        - a result's files, once no delivery is pending and ``retention_seconds`` have passed
          since the last one ended.
        """
        now = time.time() if now is None else now
        received = self._query(
            "SELECT key FROM instances WHERE file_deleted = 0 AND triaged_at <= ? "
            "AND (state = 'refused' OR result_id IS NOT NULL)",
            (now - retention_seconds,),
        )
        headers = self._query(
            "SELECT i.key FROM instances i JOIN studies s ON s.study = i.study "
            "WHERE i.header_deleted = 0 AND i.state != 'received' AND s.last_received <= ? "
            "AND (i.state != 'triaged' OR i.result_id IS NOT NULL)",
            (now - study_window_seconds,),
        )
        results = self._query(
            "SELECT r.id, r.files FROM results r WHERE r.files_deleted = 0 "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.result_id = r.id "
            "                AND d.state = 'pending') "
            "AND COALESCE((SELECT MAX(COALESCE(d.sent_at, r.created_at)) FROM deliveries d "
            "              WHERE d.result_id = r.id), r.created_at) <= ?",
            (now - retention_seconds,),
        )
        return {
            "received": self._delete(
                received,
                lambda r: [self.incoming_path(r["key"])],
                "UPDATE instances SET file_deleted = 1 WHERE key = ?",
            ),
            "headers": self._delete(
                headers,
                lambda r: [self.header_path(r["key"])],
                "UPDATE instances SET header_deleted = 1 WHERE key = ?",
            ),
            "results": self._delete(
                results,
                lambda r: [self.outbox / name for name in r["files"].split(",")],
                "UPDATE results SET files_deleted = 1 WHERE id = ?",
            ),
        }

    def _delete(
        self, rows: list[sqlite3.Row], paths: Callable[[sqlite3.Row], list[Path]], mark: str
    ) -> int:
        """Delete the files of ``rows``, then record it with ``mark`` (keyed by column 0)."""
        for row in rows:
            for path in paths(row):
                path.unlink(missing_ok=True)
        if rows:
            with self._transaction() as db:
                db.executemany(mark, [(row[0],) for row in rows])
        return len(rows)

    # -- reporting -------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """Everything counted so far: instances by state and refusal reason, results,
        deliveries by state, send attempts, and events by kind."""

        def grouped(sql: str) -> dict[str, int]:
            return {str(r[0]): int(r[1]) for r in self._query(sql)}

        return {
            "instances": grouped("SELECT state, COUNT(*) FROM instances GROUP BY state"),
            "refused_by_reason": grouped(
                "SELECT reason, COUNT(*) FROM instances WHERE state = 'refused' GROUP BY reason"
            ),
            "studies": int(self._query("SELECT COUNT(*) FROM studies")[0][0]),
            "results": int(self._query("SELECT COUNT(*) FROM results")[0][0]),
            "deliveries": grouped("SELECT state, COUNT(*) FROM deliveries GROUP BY state"),
            "attempts": grouped(
                "SELECT CASE ok WHEN 1 THEN 'ok' ELSE 'failed' END, COUNT(*) FROM attempts "
                "GROUP BY ok"
            ),
            "events": grouped("SELECT kind, COUNT(*) FROM events GROUP BY kind"),
        }
