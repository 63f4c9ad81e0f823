"""The DICOM listener: a C-STORE / C-ECHO SCP (pynetdicom) that spools what it accepts.

Association: the called AE title must be the listener's, the calling AE title one of
``calling_aes`` (else the association is rejected: result 1, source 1, reason 3 "calling AE
title not recognised", or 7 for the called AE title). Presentation contexts: Verification, and
the storage SOP classes of projection radiographs (CR, DX for presentation and for processing)
plus Secondary Capture (``accept_secondary_capture``), each in every transfer syntax the reader
decodes (:data:`TRANSFER_SYNTAXES`); other SOP classes and syntaxes are refused at negotiation
and logged with their names, so the sender knows at once.

C-STORE statuses (PS3.4 Annex B; ``CONFORMANCE.md``):

======  ==============================================================================
0x0000  Success: the instance is on disk (``fsync``) and recorded; it will be triaged
0xA700  Refused, out of resources: the spool could not take it (disk full, not writable)
0xA900  Error, data set does not match SOP class: no/invalid SOP Instance or Study UID,
        or the data set's SOP Instance UID differs from the command's
0xC000  Error, cannot understand: the data set could not be parsed (reason logged)
======  ==============================================================================

An instance already spooled or triaged (same SOP Instance UID) is answered Success and not
stored again. Whether a stored instance can be scored (modality, pixels, codec...) is decided
by the worker, with the reader's typed reasons; the C-STORE status only says it was received.
"""

from __future__ import annotations

import io
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from cxr_triage.errors import InvalidImageError
from cxr_triage.io.dicom.parse import parse_dicom
from cxr_triage.io.records import ImageLimits
from cxr_triage.pacs.settings import PacsSettings
from cxr_triage.pacs.spool import Spool, SpoolUnavailableError

__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_DOES_NOT_MATCH",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "DicomReceiver",
    "storage_sop_classes",
    "transfer_syntaxes",
]

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DOES_NOT_MATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# CR, DX for presentation, DX for processing; Secondary Capture on request.
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def _valid_uid(value: str) -> bool:
    return len(value) <= 64 and bool(_UID.fullmatch(value))


def transfer_syntaxes() -> list[str]:
    """Every transfer syntax whose pixel data this installation decodes (pydicom's plugins).

    Source: pydicom's decoder registry (``get_decoder(uid).is_available``): the uncompressed
    and deflated syntaxes, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE.
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    out = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                out.append(str(uid))
        except NotImplementedError:  # MPEG, HEVC, JPEG 2000 part 2: no decoder exists
            continue
    return out


def storage_sop_classes(settings: PacsSettings) -> list[str]:
    """The storage SOP classes accepted: CR, DX (both), and SC when the settings say so."""
    classes = [CR_STORAGE, DX_PRESENTATION_STORAGE, DX_PROCESSING_STORAGE]
    if settings.accept_secondary_capture:
        classes.append(SECONDARY_CAPTURE_STORAGE)
    return classes


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def _server_ssl_context(settings: PacsSettings) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.1): the listener's certificate, client certificates if a CA is set."""
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(settings.tls_ca))
    return context


class DicomReceiver:
    """The C-STORE SCP writing into a :class:`Spool`.

    Args:
        settings: AE title, address, allowed calling AEs and their sites, TLS, timeouts.
        spool: where instances go.
        on_stored: called (from the association's thread) after each newly stored instance,
            e.g. to wake the worker.
        limits: the guards used to parse the received header (deflate, element count).
    """

    def __init__(
        self,
        settings: PacsSettings,
        spool: Spool,
        *,
        on_stored: Callable[[], None] | None = None,
        limits: ImageLimits = ImageLimits(),
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.on_stored = on_stored
        self.limits = limits
        self._server: Any = None
        self._ae: Any = None
        self.counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()

    def _count(self, kind: str, detail: str = "") -> None:
        with self._counts_lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
        self.spool.record_event(kind, detail)

    # -- handlers ----------------------------------------------------------------------------

    def _handle_store(self, event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        sop_class = str(event.request.AffectedSOPClassUID or "")
        if not _valid_uid(sop_uid):
            log.warning("C-STORE from %s refused: invalid SOP Instance UID (0xA900)", calling)
            self._count("store_refused_invalid_uid", calling)
            return STATUS_DOES_NOT_MATCH
        data = event.encoded_dataset()
        try:
            ds = parse_dicom(io.BytesIO(data), len(data), self.limits, header_only=True).ds
        except InvalidImageError as exc:
            log.warning(
                "C-STORE from %s refused: the data set cannot be parsed (%s) (0xC000)",
                calling,
                exc.reason,
            )
            self._count("store_refused_unparsable", f"{calling} {exc.reason}")
            return STATUS_CANNOT_UNDERSTAND
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        if str(ds.get("SOPInstanceUID", "") or "") != sop_uid or not _valid_uid(study_uid):
            log.warning(
                "C-STORE from %s refused: the data set's SOP Instance UID differs from the "
                "command's, or it has no valid Study Instance UID (0xA900)",
                calling,
            )
            self._count("store_refused_uid_mismatch", calling)
            return STATUS_DOES_NOT_MATCH
        try:
            outcome = self.spool.store(
                data,
                sop_instance_uid=sop_uid,
                sop_class_uid=sop_class,
                study_instance_uid=study_uid,
                transfer_syntax=str(event.context.transfer_syntax),
                source="dicom",
                calling_ae=calling,
                site=self.settings.site_of(calling),
            )
        except SpoolUnavailableError as exc:
            log.error("C-STORE from %s refused: out of resources (0xA700): %s", calling, exc)
            self._count("store_refused_out_of_resources", calling)
            return STATUS_OUT_OF_RESOURCES
        log.info(
            "instance %s of study %s from %s: %s",
            outcome.key,
            outcome.study,
            calling,
            outcome.status,
        )
        if outcome.status == "duplicate":
            self._count("duplicate", calling)
        elif self.on_stored is not None:
            self.on_stored()
        return STATUS_SUCCESS

    def _handle_accepted(self, event: Any) -> None:
        assoc = event.assoc
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        refused = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts} - accepted)
        calling = str(assoc.requestor.ae_title).strip()
        log.debug(
            "association from %s: refused contexts %s", calling, "; ".join(map(_uid_name, refused))
        )
        if refused and not accepted & set(storage_sop_classes(self.settings)):
            names = "; ".join(_uid_name(uid) for uid in refused[:8])
            log.warning(
                "association from %s: none of the storage SOP classes it proposed is accepted "
                "here (refused: %s%s); this listener takes CR, DX%s in the transfer syntaxes "
                "it decodes",
                calling,
                names,
                f" and {len(refused) - 8} more" if len(refused) > 8 else "",
                " and Secondary Capture" if self.settings.accept_secondary_capture else "",
            )
            self._count("contexts_refused", f"{calling}: {len(refused)}")

    def _handle_rejected(self, event: Any) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        called = str(event.assoc.acceptor.ae_title).strip()
        log.warning(
            "association from %s (called %s) at %s rejected: allowed calling AE titles are %s, "
            "the called AE title must be %s",
            calling,
            called,
            event.assoc.requestor.address,
            ", ".join(sorted(self.settings.calling_aes)),
            self.settings.ae_title,
        )
        self._count("association_rejected", calling)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (non-blocking; the associations run in their own threads)."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        self.settings.require_calling_aes()
        ae = AE(ae_title=self.settings.ae_title)
        syntaxes = transfer_syntaxes()
        for sop_class in storage_sop_classes(self.settings):
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.settings.calling_aes)
        ae.maximum_associations = self.settings.max_associations
        ae.network_timeout = self.settings.network_timeout
        ae.acse_timeout = self.settings.network_timeout
        ae.dimse_timeout = self.settings.network_timeout
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
        ]
        self._server = ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=_server_ssl_context(self.settings),
        )
        self._ae = ae
        log.info(
            "DICOM listener %s on %s:%d%s; calling AEs: %s",
            self.settings.ae_title,
            self.settings.host,
            self.settings.port,
            " (TLS)" if self.settings.tls_cert else "",
            ", ".join(f"{ae}={site or '-'}" for ae, site in self.settings.calling_aes.items()),
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, let open associations finish (up to ``timeout`` s), then stop."""
        if self._server is None:
            return
        self._server.shutdown()
        deadline = time.monotonic() + timeout
        while self._ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        self._ae.shutdown()
        self._server = None
