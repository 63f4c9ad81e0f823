"""Sending results: C-STORE to destination AEs, STOW-RS to a DICOMweb server, the worklist
webhook; retries with backoff, every attempt recorded in the spool.

A result is queued once per destination when it is made (:meth:`Spool.add_result`); its files
(the SR, optionally a secondary capture) are already in the outbox with their final SOP
Instance UIDs, so every attempt sends the same instances. A failed attempt is retried after
``retry_initial_seconds``, doubling up to ``retry_max_seconds``, for as long as it takes: a
destination that is down never blocks triage (the sender has its own thread) and never drops a
result. After a failure, the rest of that destination's queue waits for the next pass, so a
dead destination costs one timeout per pass, not one per result. Within a pass, a destination's
results share one association.

Destinations are named as the spool records them: ``AE@host:port`` (C-STORE),
``stow:<base URL>`` (STOW-RS) and ``webhook:<URL>`` (the worklist feed).

The worklist feed is a JSON ``POST`` per result (to any system that can take a webhook)::

    {"study_instance_uid": "1.2.840...", "priority": "high" | "routine",
     "prob_abnormal": 0.87, "label": "abnormal", "threshold": 0.45,
     "model_tag": "cxr-triage:613293254db89f8e", "time": "2026-11-30T12:00:00+00:00",
     "result_version": 1, "supersedes_previous": false,
     "sr_sop_instance_uid": "1.2.826...", "disclaimer": "Not for clinical use: ..."}

``priority`` is ``high`` when the study's probability is at or above the threshold (the study
is labelled abnormal), else ``routine``. It carries the Study Instance UID, because the
worklist it goes to is the hospital's own.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pydicom

from cxr_triage.errors import CxrError
from cxr_triage.pacs.settings import Destination, PacsSettings
from cxr_triage.pacs.spool import Delivery, ResultRow, Spool
from cxr_triage.vocabulary import ABNORMAL, NOT_FOR_CLINICAL_USE

__all__ = [
    "CStoreSender",
    "Outbox",
    "SendError",
    "StowSender",
    "WebhookSender",
    "backoff_seconds",
    "worklist_entry",
]

log = logging.getLogger(__name__)

# C-STORE statuses that mean "stored": success and the three warnings (coercion, elements
# discarded, data set does not match SOP class: stored anyway).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}
# What a result is made of: the SR, and the optional secondary capture.
RESULT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7")


class SendError(CxrError):
    """One attempt to deliver a result failed (the message says how); it will be retried."""


class Sender(Protocol):
    name: str

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Deliveries inside share what can be shared (one association, one session)."""
        ...

    def send(self, files: Sequence[Path], result: ResultRow) -> str:
        """Deliver the result's files; return a short description of what was done."""
        ...


def backoff_seconds(failures: int, settings: PacsSettings) -> float:
    """The wait before the next attempt after ``failures`` failed ones (>= 1): the initial
    delay, doubled per further failure, at most the maximum."""
    return min(
        settings.retry_max_seconds, settings.retry_initial_seconds * 2 ** max(0, failures - 1)
    )


class CStoreSender:
    """C-STORE SCU (pynetdicom) to one destination AE; inside :meth:`batch`, one association
    carries every delivery of the pass."""

    def __init__(self, destination: Destination, settings: PacsSettings) -> None:
        self.destination = destination
        self.settings = settings
        self.name = destination.name
        self._assoc: Any = None
        self._batched = False

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        self._batched = True
        try:
            yield
        finally:
            self._batched = False
            self._release()

    def _association(self) -> Any:
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        ae = AE(ae_title=self.settings.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.network_timeout
        for sop_class in RESULT_SOP_CLASSES:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        dest = self.destination
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted or unreachable"
            raise SendError(f"association with {dest.name} {why}")
        self._assoc = assoc
        return assoc

    def _release(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def send(self, files: Sequence[Path], result: ResultRow) -> str:
        datasets = [pydicom.dcmread(path) for path in files]
        dest = self.destination
        statuses = []
        try:
            assoc = self._association()
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if "Status" in status else None
                if code not in _STORED:
                    raise SendError(
                        f"C-STORE to {dest.name} failed: "
                        + ("no response (connection lost or timed out)" if code is None
                           else f"status 0x{code:04X}")
                    )  # fmt: skip
                statuses.append(f"0x{code:04X}")
        except SendError:
            self._release()
            raise
        finally:
            if not self._batched:
                self._release()
        return f"C-STORE {', '.join(statuses)}"


class _UrlSender:
    """A destination named ``<kind>:<url>``; nothing shared between its deliveries."""

    kind = ""

    def __init__(self, url: str, settings: PacsSettings) -> None:
        self.url = url
        self.settings = settings
        self.name = f"{self.kind}:{url}"

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class StowSender(_UrlSender):
    """STOW-RS (dicomweb-client) to a DICOMweb server's ``/studies``."""

    kind = "stow"

    def send(self, files: Sequence[Path], result: ResultRow) -> str:
        import requests
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = None
        if self.settings.dicomweb_user:
            session = create_session_from_user_pass(
                self.settings.dicomweb_user, self.settings.dicomweb_password or ""
            )
        client = DICOMwebClient(self.url, session=session, timeout=self.settings.network_timeout)
        datasets = [pydicom.dcmread(path) for path in files]
        try:
            response = client.store_instances(datasets=datasets)
        except (requests.RequestException, OSError) as exc:
            raise SendError(f"STOW-RS to {self.url} failed: {exc}") from exc
        failed = response.get("FailedSOPSequence", [])
        if failed:
            reasons = [f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed]
            raise SendError(f"STOW-RS to {self.url}: {len(failed)} instance(s) refused {reasons}")
        return f"STOW-RS stored {len(datasets)}"


def worklist_entry(result: ResultRow, study_instance_uid: str, threshold: float) -> dict[str, Any]:
    """The worklist feed's JSON for one result (fields in the module docstring)."""
    return {
        "study_instance_uid": study_instance_uid,
        "priority": "high" if result.label == ABNORMAL else "routine",
        "prob_abnormal": round(result.prob, 6),
        "label": result.label,
        "threshold": round(threshold, 6),
        "model_tag": result.model_tag,
        "time": datetime.fromtimestamp(result.created_at, UTC).isoformat(timespec="seconds"),
        "result_version": result.version,
        "supersedes_previous": result.version > 1,
        "sr_sop_instance_uid": result.sr_uid,
        "disclaimer": NOT_FOR_CLINICAL_USE,
    }


class WebhookSender(_UrlSender):
    """The worklist feed: POST the result's JSON to a URL (2xx = delivered)."""

    kind = "webhook"

    def send(self, files: Sequence[Path], result: ResultRow) -> str:
        import requests

        sr = pydicom.dcmread(files[0], stop_before_pixels=True)
        threshold = _threshold_of(sr)
        body = worklist_entry(result, str(sr.StudyInstanceUID), threshold)
        try:
            response = requests.post(self.url, json=body, timeout=self.settings.network_timeout)
        except requests.RequestException as exc:
            raise SendError(f"worklist webhook {self.url} failed: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise SendError(f"worklist webhook {self.url} answered {response.status_code}")
        return f"webhook {response.status_code}"


def _threshold_of(sr: Any) -> float:
    from cxr_triage.pacs.report import read_sr_result

    return float(read_sr_result(sr)["threshold"])


class Outbox:
    """Delivers due results to every configured destination.

    Args:
        settings: destinations, retry delays, timeouts.
        spool: where results and deliveries are recorded.
        senders: override the senders built from the settings (by destination name).
    """

    def __init__(
        self, settings: PacsSettings, spool: Spool, senders: Sequence[Sender] | None = None
    ) -> None:
        self.settings = settings
        self.spool = spool
        if senders is None:
            built: list[Sender] = [CStoreSender(d, settings) for d in settings.destinations]
            if settings.stow_url:
                built.append(StowSender(settings.stow_url, settings))
            if settings.worklist_webhook:
                built.append(WebhookSender(settings.worklist_webhook, settings))
            senders = built
        self.senders = {s.name: s for s in senders}

    def send_due(self, now: float | None = None) -> dict[str, int]:
        """One pass over the due deliveries; returns counts of ``sent`` and ``failed``."""
        now = time.time() if now is None else now
        out = {"sent": 0, "failed": 0}
        queues: dict[str, list[Delivery]] = {}
        for delivery in self.spool.due_deliveries(now):
            queues.setdefault(delivery.destination, []).append(delivery)
        for destination, queue in queues.items():
            sender = self.senders.get(destination)
            batch = sender.batch() if sender is not None else contextlib.nullcontext()
            with batch:
                for delivery in queue:
                    if not self._deliver(delivery, sender):
                        out["failed"] += 1
                        break  # down: the rest of its queue waits for the next pass
                    out["sent"] += 1
        return out

    def _deliver(self, delivery: Delivery, sender: Sender | None) -> bool:
        """One attempt, recorded; True when delivered."""
        result = self.spool.result(delivery.result_id)
        try:
            if sender is None:
                raise SendError(
                    f"{delivery.destination} is no longer a configured destination; add it "
                    "back to the settings to deliver its queue"
                )
            detail = sender.send([self.spool.outbox / f for f in result.files], result)
        except (SendError, OSError) as exc:
            failures = delivery.attempts + 1
            wait = backoff_seconds(failures, self.settings)
            self.spool.record_attempt(
                delivery, ok=False, detail=str(exc), next_at=time.time() + wait
            )
            log.warning(
                "result %d (study %s, v%d) to %s: attempt %d failed: %s; next in %.0f s",
                result.id,
                result.study,
                result.version,
                delivery.destination,
                failures,
                exc,
                wait,
            )
            return False
        self.spool.record_attempt(delivery, ok=True, detail=detail)
        log.info(
            "result %d (study %s, v%d, SR %s) delivered to %s on attempt %d: %s",
            result.id,
            result.study,
            result.version,
            result.sr_uid,
            delivery.destination,
            delivery.attempts + 1,
            detail,
        )
        return True
