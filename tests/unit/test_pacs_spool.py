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
from helpers.pacs import CALLING_AE, store_file

SALT = "unit-test-salt-0123456789"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool", Pseudonymiser(SALT))
    yield spool
    spool.close()


def _store(spool: Spool, path: Path):
    return store_file(spool, path, site="hospital_a")


def test_store_writes_the_file_under_a_pseudonym_and_records_it(spool, make_dicom) -> None:
    path = make_dicom()
    ds = pydicom.dcmread(path)
    outcome = _store(spool, path)
    assert outcome.status == "stored"
    assert outcome.key == Pseudonymiser(SALT).image(ds.SOPInstanceUID)
    assert outcome.study == Pseudonymiser(SALT).study(ds.StudyInstanceUID)
    assert spool.incoming_path(outcome.key).read_bytes() == path.read_bytes()
    (row,) = spool.pending(10)
    assert (row.key, row.state, row.site, row.calling_ae) == (
        outcome.key,
        "received",
        "hospital_a",
        CALLING_AE,
    )
    assert not list(spool.incoming.glob(".*"))  # no temporary file left


def test_a_duplicate_is_not_stored_again_a_refused_one_is(spool, make_dicom) -> None:
    path = make_dicom()
    first = _store(spool, path)
    assert _store(spool, path).status == "duplicate"
    spool.mark_outcomes([], [(first.key, "no_pixel_data", "no pixels")])
    assert _store(spool, path).status == "resent"
    assert [r.state for r in spool.instances()] == ["received"]
    spool.mark_outcomes([(first.key, 0.5, "dicom-x")], [])
    assert _store(spool, path).status == "duplicate"
    assert [r.state for r in spool.instances()] == ["triaged"]


def test_an_unwritable_spool_refuses_and_leaves_nothing(spool, make_dicom) -> None:
    shutil.rmtree(spool.incoming)
    spool.incoming.write_text("a file where the folder should be")  # writes fail: ENOTDIR
    with pytest.raises(SpoolUnavailableError, match="cannot take it"):
        _store(spool, make_dicom())
    assert spool.instances() == []
    assert spool.counts()["instances"] == {}


def test_sweep_removes_what_was_never_acknowledged(spool, make_dicom) -> None:
    kept = _store(spool, make_dicom(name="a.dcm"))
    (spool.incoming / "deadbeefdeadbeef.dcm").write_bytes(b"written, never recorded")
    (spool.incoming / ".tmpabc.part").write_bytes(b"half")
    (spool.outbox / "1.2.3.dcm").write_bytes(b"result never recorded")
    assert spool.sweep() == {"partial": 1, "unacknowledged": 1, "unrecorded_results": 1}
    assert [p.name for p in spool.incoming.iterdir()] == [f"{kept.key}.dcm"]
    assert list(spool.outbox.iterdir()) == []
    assert spool.counts()["events"]["swept_unacknowledged"] == 1


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


def test_results_supersede_and_cancel_unsent_deliveries(spool, make_dicom) -> None:
    one = _store(spool, make_dicom(name="a.dcm"))
    spool.mark_outcomes([(one.key, 0.8, "dicom-a")], [])
    assert spool.due_studies(quiet_seconds=3600) == []  # not quiet long enough
    assert spool.due_studies(quiet_seconds=0, now=time.time() + 1) == [one.study]
    first = _result(spool, one.study, [one.key], "2.25.10")
    assert first.version == 1
    assert spool.due_studies(quiet_seconds=0, now=time.time() + 1) == []
    (a, b) = spool.due_deliveries()
    spool.record_attempt(a, ok=True, detail="C-STORE 0x0000")
    second = _result(spool, one.study, [one.key], "2.25.11")
    assert second.version == 2
    states = {(d.result_id, d.destination): d.state for d in spool.deliveries()}
    assert states == {
        (first.id, "A"): "sent",
        (first.id, "B"): "cancelled",
        (second.id, "A"): "pending",
        (second.id, "B"): "pending",
    }
    assert spool.result(first.id).superseded_by == second.id


def test_a_failed_attempt_waits_for_its_retry(spool) -> None:
    record = _result(spool, "s", [], "2.25.20", destinations=("A",))
    (delivery,) = spool.due_deliveries()
    spool.record_attempt(delivery, ok=False, detail="refused", next_at=time.time() + 60)
    assert spool.due_deliveries() == []
    (later,) = spool.due_deliveries(now=time.time() + 61)
    assert (later.attempts, later.last_error) == (1, "refused")
    spool.record_attempt(later, ok=True, detail="ok")
    assert [a["ok"] for a in spool.attempts()] == [0, 1]
    assert spool.deliveries(record.id)[0].state == "sent"


def test_backoff_doubles_up_to_the_maximum() -> None:
    settings = PacsSettings(retry_initial_seconds=2, retry_max_seconds=10)
    assert [backoff_seconds(n, settings) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]


def test_housekeeping_deletes_after_triage_and_delivery(spool, make_dicom) -> None:
    one = _store(spool, make_dicom(name="a.dcm"))
    refused = _store(spool, make_dicom(name="b.dcm"))
    spool.mark_outcomes([(one.key, 0.8, "dicom-a")], [(refused.key, "not_frontal", "lateral")])
    spool.header_path(one.key).write_bytes(b"header")
    window = {"retention_seconds": 0, "study_window_seconds": 3600}
    assert spool.housekeeping(**window)["received"] == 1  # the refused one; the other waits
    assert spool.incoming_path(one.key).exists()
    record = _result(spool, one.study, [one.key], "2.25.30", destinations=("A",))
    (spool.outbox / record.files[0]).write_bytes(b"sr")
    assert spool.housekeeping(**window) == {"received": 1, "headers": 0, "results": 0}
    (delivery,) = spool.due_deliveries()
    spool.record_attempt(delivery, ok=True, detail="ok")
    assert spool.housekeeping(**window)["results"] == 1
    assert list(spool.incoming.iterdir()) == [] and list(spool.outbox.iterdir()) == []
    later = time.time() + 3601
    assert spool.housekeeping(**window, now=later)["headers"] == 2
    assert not spool.header_path(one.key).exists()


def test_the_database_holds_no_identifier(spool, make_dicom) -> None:
    path = make_dicom(patient_id="PID-4711", accession_number="ACC-0815")
    ds = pydicom.dcmread(path)
    outcome = _store(spool, path)
    spool.mark_outcomes([(outcome.key, 0.3, "dicom-x")], [])
    spool.record_event("association_rejected", "MOD9")
    spool.close()
    database = b"".join(p.read_bytes() for p in spool.root.glob("state.sqlite*"))
    for identifier in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, "PID-4711"):
        assert str(identifier).encode() not in database


def test_worklist_entry_fields(spool) -> None:
    record = _result(spool, "s", [], "2.25.40", destinations=())
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
