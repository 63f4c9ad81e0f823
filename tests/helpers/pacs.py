"""Helpers for the DICOM listener tests: a storage SCP destination, an SCU."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom

SALT = "pacs-test-salt-0123456789abcdef"
CALLING_AE = "MODALITY1"
SITE = "hospital_a"


class StorageDestination:
    """A C-STORE SCP on 127.0.0.1 (pynetdicom) that keeps every data set it receives.

    ``status`` is the C-STORE status it answers with (e.g. 0xA700 to play a full PACS).
    """

    def __init__(self, port: int, ae_title: str = "DEST") -> None:
        self.port = port
        self.ae_title = ae_title
        self.received: list[pydicom.Dataset] = []
        self.status = 0x0000
        self._server: Any = None
        self._lock = threading.Lock()

    def _store(self, event: Any) -> int:
        with self._lock:
            if self.status == 0x0000:
                ds = event.dataset
                ds.file_meta = event.file_meta
                self.received.append(ds)
        return self.status

    def start(self) -> StorageDestination:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


@contextmanager
def association(
    port: int, contexts: list[tuple[str, list[str]]], calling: str = CALLING_AE
) -> Iterator[Any]:
    """An association from ``calling`` to the listener (None-safe: check ``is_established``)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRTRIAGE")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def store_files(port: int, paths: list[Path], calling: str = CALLING_AE) -> list[int]:
    """C-STORE each file in its own transfer syntax; the status of each (or -1: no context)."""
    datasets = [pydicom.dcmread(p) for p in paths]
    contexts = sorted(
        {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    )
    with association(port, [(c, [t]) for c, t in contexts], calling) as assoc:
        assert assoc.is_established, "the listener refused the association"
        out = []
        for ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except ValueError:  # no accepted presentation context for it
                out.append(-1)
                continue
            out.append(int(status.Status))
        return out


def store_file(spool: Any, path: Path, *, site: str | None = SITE) -> Any:
    """Put a DICOM file into a spool as the listener would (calling AE :data:`CALLING_AE`)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return spool.store(
        path.read_bytes(),
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        study_instance_uid=ds.StudyInstanceUID,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        source="dicom",
        calling_ae=CALLING_AE,
        site=site,
    )
