"""The DICOM listener in-process on 127.0.0.1: receiver, worker and outbox with real pynetdicom
peers and the tiny trained package (the slow acceptance tests use Orthanc and dcmtk)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr_triage.data.deid import Pseudonymiser
from cxr_triage.errors import QcFailedError
from cxr_triage.inference.feedback import study_key
from cxr_triage.inference.predlog import PredictionLog
from cxr_triage.pacs.outbox import Outbox
from cxr_triage.pacs.report import read_sr_result
from cxr_triage.pacs.scp import (
    CR_STORAGE,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    DicomReceiver,
)
from cxr_triage.pacs.settings import PacsSettings
from cxr_triage.pacs.spool import Spool
from cxr_triage.pacs.triage import TriageWorker
from helpers.pacs import (
    CALLING_AE,
    SALT,
    SITE,
    StorageDestination,
    association,
    store_file,
)
from helpers.pacs import store_files as store_over_dicom
from helpers.ports import free_port

pytestmark = pytest.mark.integration

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _echo(port: int) -> int:
    from pynetdicom.sop_class import Verification

    with association(port, [(Verification, [ExplicitVRLittleEndian])]) as assoc:
        assert assoc.is_established
        return int(assoc.send_c_echo().Status)


def test_receiver_stores_acknowledges_and_refuses(
    dicom_receiver, pacs_settings, receiver_spool, make_dicom
) -> None:
    port = pacs_settings.port
    assert _echo(port) == STATUS_SUCCESS
    first, second = make_dicom(name="a.dcm"), make_dicom(name="b.dcm", modality="CR")
    assert store_over_dicom(port, [first, second, first]) == [STATUS_SUCCESS] * 3
    rows = receiver_spool.instances()
    assert len(rows) == 2  # the repeated instance was acknowledged, not stored twice
    assert {r.site for r in rows} == {SITE} and {r.calling_ae for r in rows} == {CALLING_AE}
    for row in rows:
        assert receiver_spool.incoming_path(row.key).is_file()
    assert receiver_spool.counts()["events"] == {"duplicate": 1}

    # an unknown calling AE title: the association is rejected
    with association(port, [(CR_STORAGE, [ExplicitVRLittleEndian])], calling="STRANGER") as a:
        assert a.is_rejected
    # an SOP class the listener does not take: no presentation context is accepted
    with association(port, [(CT_STORAGE, [ExplicitVRLittleEndian])]) as assoc:
        assert not assoc.is_established or not assoc.accepted_contexts
    # a client that does not speak DICOM at all
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
        raw.settimeout(5)
        try:
            raw.recv(1024)
        except OSError:
            pass
    assert _echo(port) == STATUS_SUCCESS  # still serving
    events = receiver_spool.counts()["events"]
    assert events["association_rejected"] == 1 and events["contexts_refused"] == 1

    # a spool that cannot be written answers "out of resources", never Success
    receiver_spool.incoming.rename(receiver_spool.root / "moved")
    receiver_spool.incoming.write_text("not a folder")
    assert store_over_dicom(port, [make_dicom(name="c.dcm")]) == [STATUS_OUT_OF_RESOURCES]
    assert len(receiver_spool.instances()) == 2


def _store_locally(spool: Spool, path: Path) -> str:
    return store_file(spool, path).key


def _study(
    make_dicom,
    tiny_pipeline,
    views: list[str],
    study_uid: str,
    name: str = "i",
    extra: dict | None = None,
    **kwargs,
) -> list[Path]:
    """DICOMs of one study from the synthetic images of the tiny pipeline, one per view."""
    sources = sorted((Path(tiny_pipeline.params.paths.synth_dir) / "hospital_a").rglob("*.dcm"))
    paths = []
    for n, view in enumerate(views):
        pixels = pydicom.dcmread(sources[n]).pixel_array.astype(np.uint16)
        attributes = {**(extra or {}), "StudyInstanceUID": study_uid, "ViewPosition": view}
        paths.append(
            make_dicom(pixels, name=f"{name}-{n}.dcm", bits_stored=16, extra=attributes, **kwargs)
        )
    return paths


def test_worker_applies_the_quality_gate_as_predict_does(
    pacs_settings, receiver_spool, tiny_predictor, make_dicom, tiny_pipeline, tmp_path, caplog
) -> None:
    # The tiny package's gate refuses children by header (PatientAge below qc.adult_min_age):
    # a child's frontal film gets qc_failed and no probability, not a score in the result.
    study_uid = str(generate_uid())
    (adult,) = _study(make_dicom, tiny_pipeline, ["PA"], study_uid, extra={"PatientAge": "045Y"})
    (child,) = _study(
        make_dicom, tiny_pipeline, ["PA"], study_uid, name="child", extra={"PatientAge": "008Y"}
    )
    with pytest.raises(QcFailedError, match="pediatric"):  # what /predict answers
        tiny_predictor.prepare(child, {"site": SITE}, enforce_qc=True)
    keys = [_store_locally(receiver_spool, p) for p in (adult, child)]
    worker = TriageWorker(
        pacs_settings, receiver_spool, tiny_predictor, PredictionLog(tmp_path / "log.sqlite")
    )
    with caplog.at_level("WARNING", logger="cxr_triage.pacs.triage"):
        summary = worker.run_once()
    assert summary.triaged == 1 and summary.refused == {"qc_failed": 1}
    assert "pediatric" in caplog.text and "008Y" not in caplog.text  # the check, not the header
    rows = {row.key: row for row in receiver_spool.instances()}
    assert (rows[keys[1]].state, rows[keys[1]].reason, rows[keys[1]].prob) == (
        "refused",
        "qc_failed",
        None,
    )
    (result,) = summary.results
    content = read_sr_result(pydicom.dcmread(receiver_spool.outbox / result.files[0]))
    assert content["referenced"] == [pydicom.dcmread(adult).SOPInstanceUID]


def test_worker_triages_a_study_and_supersedes_it(
    pacs_settings, receiver_spool, tiny_predictor, make_dicom, tiny_pipeline, tmp_path
) -> None:
    log = PredictionLog(tmp_path / "predictions.sqlite")
    worker = TriageWorker(pacs_settings, receiver_spool, tiny_predictor, log)
    study_uid = str(generate_uid())
    pa, ap, lateral = _study(make_dicom, tiny_pipeline, ["PA", "AP", "LL"], study_uid)
    (ct,) = _study(make_dicom, tiny_pipeline, ["PA"], study_uid, name="ct", modality="CT")
    keys = [_store_locally(receiver_spool, p) for p in (pa, ap, lateral, ct)]

    summary = worker.run_once()
    assert summary.triaged == 2
    assert summary.refused == {"not_frontal": 1, "wrong_modality": 1}
    (result,) = summary.results
    expected = [p.prob_abnormal for p in tiny_predictor.predict([pa, ap], {"site": SITE})]
    assert result.prob == pytest.approx(max(expected))
    assert result.label == tiny_predictor.label_of(max(expected))
    sr = pydicom.dcmread(receiver_spool.outbox / result.files[0])
    assert sr.StudyInstanceUID == study_uid and sr.PatientID == "SYN0001"
    content = read_sr_result(sr)
    assert content["referenced"] == [pydicom.dcmread(p).SOPInstanceUID for p in (pa, ap)]
    assert content["prob_abnormal"] == pytest.approx(max(expected), abs=1e-6)
    assert content["model_tag"] == tiny_predictor.model_tag

    logged = log.read()
    assert sorted(logged["request_id"]) == sorted(f"dicom-{k}" for k in keys[:2])
    assert set(logged["site"]) == {SITE}
    assert set(logged["study_key"]) == {study_key(study_uid, SALT)}  # reads by study find them
    row = tiny_predictor.predict([pa], {"site": SITE})[0].features
    assert set(row) <= set(logged.columns)  # the same columns as the HTTP service's rows
    assert receiver_spool.counts()["refused_by_reason"] == {"not_frontal": 1, "wrong_modality": 1}
    # received files are gone once triaged into a result (retention 0); headers are kept
    assert list(receiver_spool.incoming.iterdir()) == []
    assert receiver_spool.header_path(keys[0]).is_file()

    # the same instance again is not triaged again; a late one supersedes the result
    assert _store_locally(receiver_spool, pa) == keys[0]
    (late,) = _study(make_dicom, tiny_pipeline, ["PA"], study_uid, name="late")
    _store_locally(receiver_spool, late)
    (second,) = worker.run_once().results
    assert (second.version, second.n_images) == (2, 3)
    assert receiver_spool.result(result.id).superseded_by == second.id
    sr2 = pydicom.dcmread(receiver_spool.outbox / second.files[0])
    assert sr2.SeriesInstanceUID == sr.SeriesInstanceUID and sr2.InstanceNumber == 2
    predecessor = sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
    assert len(log.read()) == 3


def test_outbox_queues_while_the_destination_is_down(
    pacs_settings, receiver_spool, tiny_predictor, make_dicom, tiny_pipeline, tmp_path
) -> None:
    worker = TriageWorker(
        pacs_settings, receiver_spool, tiny_predictor, PredictionLog(tmp_path / "p.sqlite")
    )
    (pa,) = _study(make_dicom, tiny_pipeline, ["PA"], str(generate_uid()))
    _store_locally(receiver_spool, pa)
    (result,) = worker.run_once().results
    outbox = Outbox(pacs_settings, receiver_spool)
    assert outbox.send_due() == {"sent": 0, "failed": 1}  # nobody listens yet
    (pending,) = receiver_spool.deliveries(result.id)
    assert (pending.state, pending.attempts) == ("pending", 1)
    assert outbox.send_due() == {"sent": 0, "failed": 0}  # waits for its retry time

    destination = StorageDestination(pacs_settings.destinations[0].port).start()
    try:
        destination.status = STATUS_OUT_OF_RESOURCES  # up, but full: not delivered
        assert outbox.send_due(now=time.time() + 10) == {"sent": 0, "failed": 1}
        destination.status = STATUS_SUCCESS
        assert outbox.send_due(now=time.time() + 10) == {"sent": 1, "failed": 0}
        assert outbox.send_due(now=time.time() + 10) == {"sent": 0, "failed": 0}
    finally:
        destination.stop()
    (received,) = destination.received
    assert received.SOPInstanceUID == result.sr_uid
    assert [a["ok"] for a in receiver_spool.attempts()] == [0, 0, 1]
    assert receiver_spool.deliveries(result.id)[0].state == "sent"


def test_dicom_tls_with_client_certificates(tmp_path, make_dicom) -> None:
    import shutil
    import ssl
    import subprocess

    from pynetdicom import AE

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def certificate(name: str, *sign: str) -> tuple[Path, Path]:
        key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
        cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
               "-subj", f"/CN={name}", "-keyout", key, "-out", cert]  # fmt: skip
        subprocess.run([*map(str, cmd), *sign], check=True, capture_output=True)
        return cert, key

    server_cert, server_key = certificate("127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    client_cert, client_key = certificate("modality")
    settings = PacsSettings(port=free_port(), calling_aes={CALLING_AE: SITE},
                            spool_dir=tmp_path / "spool", tls_cert=server_cert,
                            tls_key=server_key, tls_ca=client_cert)  # fmt: skip
    spool = Spool(settings.spool, Pseudonymiser(SALT))
    receiver = DicomReceiver(settings, spool)
    receiver.start()
    try:
        dataset = pydicom.dcmread(make_dicom())

        def store(with_client_cert: bool) -> int | None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
            if with_client_cert:
                context.load_cert_chain(str(client_cert), str(client_key))
            ae = AE(ae_title=CALLING_AE)
            ae.add_requested_context(dataset.SOPClassUID, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", settings.port, ae_title="CXRTRIAGE",
                                 tls_args=(context, "127.0.0.1"))  # fmt: skip
            if not assoc.is_established:
                return None
            status = int(assoc.send_c_store(dataset).Status)
            assoc.release()
            return status

        assert store(with_client_cert=False) is None  # no client certificate: no association
        assert store(with_client_cert=True) == STATUS_SUCCESS
        assert len(spool.instances()) == 1
    finally:
        receiver.stop(timeout=5)
        spool.close()
