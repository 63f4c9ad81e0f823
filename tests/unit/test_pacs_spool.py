"""The spool: durable receipt, duplicates, sweep after a crash, results and deliveries, retention,
and no identifier in its database."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pydicom
import pytest

from cxr_triage.data.deid import Pseudonymiser
from cxr_triage.pacs.outbox import backoff_seconds, worklist_entry
from cxr_triage.pacs.settings import PacsSettings
from cxr_triage.pacs.spool import Spool, SpoolBusyError, SpoolUnavailableError
from helpers.pacs import CALLING_AE, SALT, store_file


def _store(spool: Spool, path: Path):
    return store_file(spool, path, site="hospital_a")


def test_store_writes_the_file_under_a_pseudonym_and_records_it(pacs_spool, make_dicom) -> None:
    path = make_dicom()
    ds = pydicom.dcmread(path)
    outcome = _store(pacs_spool, path)
    assert outcome.status == "stored"
    assert outcome.key == Pseudonymiser(SALT).image(ds.SOPInstanceUID)
    assert outcome.study == Pseudonymiser(SALT).study(ds.StudyInstanceUID)
    assert pacs_spool.incoming_path(outcome.key).read_bytes() == path.read_bytes()
    (row,) = pacs_spool.pending(10)
    assert (row.key, row.state, row.site, row.calling_ae) == (
        outcome.key,
        "received",
        "hospital_a",
        CALLING_AE,
    )
    assert not list(pacs_spool.incoming.glob(".*"))  # no temporary file left


def test_a_duplicate_is_not_stored_again_a_refused_one_is(pacs_spool, make_dicom) -> None:
    path = make_dicom()
    first = _store(pacs_spool, path)
    assert _store(pacs_spool, path).status == "duplicate"
    pacs_spool.mark_outcomes([], [(first.key, "no_pixel_data", "no pixels")])
    assert _store(pacs_spool, path).status == "resent"
    assert [r.state for r in pacs_spool.instances()] == ["received"]
    pacs_spool.mark_outcomes([(first.key, 0.5, "dicom-x")], [])
    assert _store(pacs_spool, path).status == "duplicate"
    assert [r.state for r in pacs_spool.instances()] == ["triaged"]


def test_an_unwritable_spool_refuses_and_leaves_nothing(pacs_spool, make_dicom) -> None:
    shutil.rmtree(pacs_spool.incoming)
    pacs_spool.incoming.write_text("a file where the folder should be")  # writes fail: ENOTDIR
    with pytest.raises(SpoolUnavailableError, match="cannot take it"):
        _store(pacs_spool, make_dicom())
    assert pacs_spool.instances() == []
    assert pacs_spool.counts()["instances"] == {}


def test_sweep_removes_what_was_never_acknowledged(pacs_spool, make_dicom) -> None:
    kept = _store(pacs_spool, make_dicom(name="a.dcm"))
    (pacs_spool.incoming / "deadbeefdeadbeef.dcm").write_bytes(b"written, never recorded")
    (pacs_spool.incoming / ".tmpabc.part").write_bytes(b"half")
    (pacs_spool.outbox / "1.2.3.dcm").write_bytes(b"result never recorded")
    assert pacs_spool.sweep() == {"partial": 1, "unacknowledged": 1, "unrecorded_results": 1}
    assert [p.name for p in pacs_spool.incoming.iterdir()] == [f"{kept.key}.dcm"]
    assert list(pacs_spool.outbox.iterdir()) == []
    assert pacs_spool.counts()["events"]["swept_unacknowledged"] == 1


def test_one_worker_per_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path / "s", Pseudonymiser(SALT))
    second = Spool(tmp_path / "s", Pseudonymiser(SALT))
    assert first.worker_lock_holder() is None
    first.worker_lock()
    with pytest.raises(SpoolBusyError, match="already triages"):
        second.worker_lock()
    assert second.worker_lock_holder() is not None
    first.close()
    second.worker_lock()
    second.close()


def _result(spool: Spool, study: str, keys: list[str], uid: str, destinations=("A", "B")):
    return spool.add_result(
        study=study,
        sr_uid=uid,
        series_uid="2.25.1",
        files=[f"{uid}.dcm"],
        prob=0.8,
        label="abnormal",
        rule="max",
        model_tag="cxr-triage:x",
        instance_keys=keys,
        destinations=list(destinations),
    )


def test_results_supersede_and_cancel_unsent_deliveries(pacs_spool, make_dicom) -> None:
    one = _store(pacs_spool, make_dicom(name="a.dcm"))
    pacs_spool.mark_outcomes([(one.key, 0.8, "dicom-a")], [])
    assert pacs_spool.due_studies(quiet_seconds=3600) == []  # not quiet long enough
    assert pacs_spool.due_studies(quiet_seconds=0, now=time.time() + 1) == [one.study]
    first = _result(pacs_spool, one.study, [one.key], "2.25.10")
    assert first.version == 1
    assert pacs_spool.due_studies(quiet_seconds=0, now=time.time() + 1) == []
    (a, b) = pacs_spool.due_deliveries()
    pacs_spool.record_attempt(a, ok=True, detail="C-STORE 0x0000")
    second = _result(pacs_spool, one.study, [one.key], "2.25.11")
    assert second.version == 2
    states = {(d.result_id, d.destination): d.state for d in pacs_spool.deliveries()}
    assert states == {
        (first.id, "A"): "sent",
        (first.id, "B"): "cancelled",
        (second.id, "A"): "pending",
        (second.id, "B"): "pending",
    }
    assert pacs_spool.result(first.id).superseded_by == second.id


def test_a_failed_attempt_waits_for_its_retry(pacs_spool) -> None:
    record = _result(pacs_spool, "s", [], "2.25.20", destinations=("A",))
    (delivery,) = pacs_spool.due_deliveries()
    pacs_spool.record_attempt(delivery, ok=False, detail="refused", next_at=time.time() + 60)
    assert pacs_spool.due_deliveries() == []
    (later,) = pacs_spool.due_deliveries(now=time.time() + 61)
    assert (later.attempts, later.last_error) == (1, "refused")
    pacs_spool.record_attempt(later, ok=True, detail="ok")
    assert [a["ok"] for a in pacs_spool.attempts()] == [0, 1]
    assert pacs_spool.deliveries(record.id)[0].state == "sent"


def test_backoff_doubles_up_to_the_maximum() -> None:
    settings = PacsSettings(retry_initial_seconds=2, retry_max_seconds=10)
    assert [backoff_seconds(n, settings) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]


def test_housekeeping_deletes_after_triage_and_delivery(pacs_spool, make_dicom) -> None:
    one = _store(pacs_spool, make_dicom(name="a.dcm"))
    refused = _store(pacs_spool, make_dicom(name="b.dcm"))
    pacs_spool.mark_outcomes(
        [(one.key, 0.8, "dicom-a")], [(refused.key, "not_frontal", "lateral")]
    )
    pacs_spool.header_path(one.key).write_bytes(b"header")
    window = {"retention_seconds": 0, "study_window_seconds": 3600}
    assert pacs_spool.housekeeping(**window)["received"] == 1  # the refused one; the other waits
    assert pacs_spool.incoming_path(one.key).exists()
    record = _result(pacs_spool, one.study, [one.key], "2.25.30", destinations=("A",))
    (pacs_spool.outbox / record.files[0]).write_bytes(b"sr")
    assert pacs_spool.housekeeping(**window) == {"received": 1, "headers": 0, "results": 0}
    (delivery,) = pacs_spool.due_deliveries()
    pacs_spool.record_attempt(delivery, ok=True, detail="ok")
    assert pacs_spool.housekeeping(**window)["results"] == 1
    assert list(pacs_spool.incoming.iterdir()) == [] and list(pacs_spool.outbox.iterdir()) == []
    later = time.time() + 3601
    assert pacs_spool.housekeeping(**window, now=later)["headers"] == 2
    assert not pacs_spool.header_path(one.key).exists()


def test_the_database_holds_no_identifier(pacs_spool, make_dicom) -> None:
    path = make_dicom(patient_id="PID-4711", accession_number="ACC-0815")
    ds = pydicom.dcmread(path)
    outcome = _store(pacs_spool, path)
    pacs_spool.mark_outcomes([(outcome.key, 0.3, "dicom-x")], [])
    pacs_spool.record_event("association_rejected", "MOD9")
    pacs_spool.close()
    database = b"".join(p.read_bytes() for p in pacs_spool.root.glob("state.sqlite*"))
    for identifier in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, "PID-4711"):
        assert str(identifier).encode() not in database


def test_worklist_entry_fields(pacs_spool) -> None:
    record = _result(pacs_spool, "s", [], "2.25.40", destinations=())
    entry = worklist_entry(record, "1.2.3.4", threshold=0.45)
    assert entry["priority"] == "high" and entry["study_instance_uid"] == "1.2.3.4"
    assert set(entry) == {
        "study_instance_uid",
        "priority",
        "prob_abnormal",
        "label",
        "threshold",
        "model_tag",
        "time",
        "result_version",
        "supersedes_previous",
        "sr_sop_instance_uid",
        "disclaimer",
    }
