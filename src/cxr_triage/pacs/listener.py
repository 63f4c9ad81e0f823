"""The long-running listener process: receiver, worker and sender around one spool.

``cxr-triage listen`` builds a :class:`Listener` from :class:`PacsSettings` and runs it until
SIGTERM/SIGINT. Three parts, each in its own thread, meeting only in the spool:

- the receiver (:class:`~cxr_triage.pacs.scp.DicomReceiver`, pynetdicom's threads) stores and
  acknowledges instances and wakes the worker;
- the worker (:class:`~cxr_triage.pacs.triage.TriageWorker`) triages, closes quiet studies and
  deletes what retention allows, then sleeps until woken or until the next study is due;
- the sender (:class:`~cxr_triage.pacs.outbox.Outbox`) delivers results, then sleeps until a
  new result or the next retry.

``receive=False`` runs the worker and sender only, ``work=False`` the receiver only (e.g. two
processes on one spool; only one process may work a spool, see :meth:`Spool.worker_lock`). A
failure the worker or sender can wait out (a locked or full disk, a database busy past its
timeout) is logged and retried after :data:`RETRY_PAUSE` seconds; anything else stops the
whole listener with the error, rather than leave it receiving what nobody triages.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from cxr_triage.errors import CxrError
from cxr_triage.pacs.outbox import Outbox
from cxr_triage.pacs.scp import DicomReceiver
from cxr_triage.pacs.settings import PacsSettings
from cxr_triage.pacs.spool import Spool
from cxr_triage.pacs.triage import TriageWorker, wait_time

__all__ = [
    "RETRY_PAUSE",
    "Listener",
    "build_worker",
    "open_spool",
    "pull_and_triage",
    "quiet_identifying_loggers",
]

log = logging.getLogger(__name__)

RETRY_PAUSE = 5.0
_TRANSIENT = (OSError, sqlite3.Error, CxrError)


class Listener:
    """Receiver, worker and sender on one spool.

    Args:
        settings: the deployment settings.
        spool: the spool (opened with the pseudonymisation key).
        worker: the triage worker (None with ``work=False``).
        receive: run the DICOM receiver.
        work: run the worker and the sender (takes the spool's worker lock).
    """

    def __init__(
        self,
        settings: PacsSettings,
        spool: Spool,
        worker: TriageWorker | None,
        *,
        receive: bool = True,
        work: bool = True,
    ) -> None:
        if work and worker is None:
            raise ValueError("work=True needs a worker")
        self.settings = settings
        self.spool = spool
        self.worker = worker
        self.receive = receive
        self.work = work
        self._stop = threading.Event()
        self._work_due = threading.Event()
        self._send_due = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.receiver = (
            DicomReceiver(settings, spool, on_stored=self._work_due.set) if receive else None
        )
        self.outbox = Outbox(settings, spool) if work else None
        if worker is not None:
            worker.on_result = self._send_due.set

    # -- threads ---------------------------------------------------------------------------

    def _loop(self, name: str, step: Callable[[], float], wake: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                pause = step()
            except _TRANSIENT as exc:
                log.error("%s: %s; retrying in %.0f s", name, exc, RETRY_PAUSE)
                pause = RETRY_PAUSE
            except BaseException as exc:  # a bug: stop everything rather than half-run
                log.exception("%s failed; stopping the listener", name)
                self.error = exc
                self._stop.set()
                return
            wake.wait(pause)
            wake.clear()

    def _work_step(self) -> float:
        assert self.worker is not None
        summary = self.worker.run_once(batches=1)
        if summary.triaged or summary.refused or summary.results:
            log.info(
                "worker: %d triaged, refused %s, %d result(s)",
                summary.triaged,
                summary.refused or "none",
                len(summary.results),
            )
        if self.spool.pending(1):
            return 0.0
        return wait_time([self.worker.next_close_at()], idle=1.0)

    def _send_step(self) -> float:
        assert self.outbox is not None
        self.outbox.send_due()
        return wait_time([self.spool.next_delivery_at()], idle=5.0)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Sweep the spool, start the worker and sender, then listen.

        Raises:
            SpoolBusyError: another process already works this spool.
            ConfigError: no calling AE allowed, bad TLS files, port in use...
        """
        if self.work:
            self.spool.worker_lock()
            swept = self.spool.sweep()
            if any(swept.values()):
                log.warning("spool: removed what an interrupted run left: %s", swept)
            pending = len(self.spool.pending(1_000_000))
            if pending:
                log.info("spool: %d received instance(s) to triage from before", pending)
            for name, step, wake in (
                ("worker", self._work_step, self._work_due),
                ("sender", self._send_step, self._send_due),
            ):
                thread = threading.Thread(
                    target=self._loop,
                    args=(name, step, wake),
                    name=f"cxr-pacs-{name}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        if self.receiver is not None:
            try:
                self.receiver.start()
            except OSError as exc:
                self.stop()
                from cxr_triage.errors import ConfigError

                raise ConfigError(
                    f"cannot listen on {self.settings.host}:{self.settings.port}: {exc}; choose "
                    "another CXR_TRIAGE_PACS_PORT or stop what uses it"
                ) from exc

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (a signal handler calls :meth:`request_stop`, or a part failed);
        True when it stopped."""
        return self._stop.wait(timeout)

    def request_stop(self, *_: Any) -> None:
        """Ask the listener to stop (safe from a signal handler)."""
        self._stop.set()
        self._work_due.set()
        self._send_due.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop receiving (open associations may finish), then the worker and sender."""
        if self.receiver is not None:
            self.receiver.stop(timeout)
        self.request_stop()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        log.info("listener stopped; spool counts: %s", self.spool.counts())
        self.spool.close()


def quiet_identifying_loggers() -> None:
    """Raise pynetdicom's, highdicom's and dicomweb-client's loggers to WARNING.

    At INFO and below they log UIDs of the instances they handle (and pynetdicom, at DEBUG,
    whole data sets): identifiers that must not reach the listener's logs. Entry points
    (``cxr-triage listen``, ``pull``) call this; our own log lines carry pseudonyms only.
    """
    for name in ("pynetdicom", "highdicom", "dicomweb_client"):
        logging.getLogger(name).setLevel(logging.WARNING)


def open_spool(settings: PacsSettings) -> Spool:
    """The settings' spool with the pseudonymisation key (``CXR_TRIAGE_SALT``, required:
    received instances are real patients' data).

    Raises:
        ConfigError: no (or a too short) salt; the spool cannot be created.
    """
    from cxr_triage.data.deid import Pseudonymiser, salt_from_env

    return Spool(settings.spool, Pseudonymiser(salt_from_env(synthetic=False)))


def build_worker(
    settings: PacsSettings, spool: Spool, *, package: Any = None, model_tag: str | None = None
) -> TriageWorker:
    """A worker with the package :func:`resolve_package` picks and the prediction log.

    Raises:
        ConfigError: no model package can be found (the message says how to get one).
    """
    from cxr_triage.inference.predictor import Predictor
    from cxr_triage.inference.predlog import PredictionLog
    from cxr_triage.inference.registry import resolve_package

    resolved = resolve_package(package, model_tag)
    predictor = Predictor(
        resolved.path, model_tag=resolved.tag, num_threads=settings.decode_threads
    )
    log.info(
        "model %s (%s), threshold %.4f", resolved.tag, resolved.chosen_by, predictor.threshold
    )
    return TriageWorker(settings, spool, predictor, PredictionLog())


def pull_and_triage(
    settings: PacsSettings,
    url: str,
    study_instance_uid: str,
    *,
    site: str | None = None,
    package: Any = None,
    model_tag: str | None = None,
) -> dict[str, Any]:
    """``cxr-triage pull``: fetch a study into the spool, triage it, send its result once.

    When a listener already works the spool, the instances are left to it (``queued_for``
    names its pid). Otherwise this process triages them, closes the study at once (the whole
    study was fetched, so there is nothing to wait for), and makes one delivery pass; what is
    not delivered stays queued for the next ``cxr-triage listen``.

    Returns:
        ``stored``, ``duplicates``, ``skipped_sop_class``, and either ``queued_for`` or
        ``triaged``, ``refused`` (by reason) and ``result`` (probability, label, SR UID,
        deliveries).
    """
    from cxr_triage.pacs.dicomweb import pull_study
    from cxr_triage.pacs.spool import SpoolBusyError

    spool = open_spool(settings)
    try:
        pulled = pull_study(url, study_instance_uid, spool, settings, site=site)
        out: dict[str, Any] = {
            "stored": sum(o.status != "duplicate" for o in pulled.stored),
            "duplicates": sum(o.status == "duplicate" for o in pulled.stored),
            "skipped_sop_class": pulled.skipped_sop_class,
        }
        try:
            spool.worker_lock()
        except SpoolBusyError:
            out["queued_for"] = spool.worker_lock_holder()
            return out
        spool.sweep()
        worker = build_worker(settings, spool, package=package, model_tag=model_tag)
        summary = worker.triage_pending()
        out.update(triaged=summary.triaged, refused=summary.refused)
        study = spool.study_key(study_instance_uid)
        if study in spool.due_studies(0, now=float("inf")):
            worker.close_study(study)
        record = spool.current_result(study)
        if record is not None:
            Outbox(settings, spool).send_due()
            out["result"] = {
                "prob_abnormal": record.prob,
                "label": record.label,
                "version": record.version,
                "sr_sop_instance_uid": record.sr_uid,
                "deliveries": {d.destination: d.state for d in spool.deliveries(record.id)},
            }
        return out
    finally:
        spool.close()
