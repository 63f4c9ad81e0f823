"""Acceptance of the DICOM listener with real software: Orthanc (the PACS), dcmtk (the modality),
dicom3tools (the validator), ``cxr-triage listen`` as its own process.

Everything runs inside a private network namespace (``helpers/netns.py``): Orthanc listens on every
interface, and there the only one is a loopback of the test's own. dcmtk's exit codes can be 0
on failure (STACK-wave2.md §2), so its output is read.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from cxr_triage.data.deid import Pseudonymiser
from cxr_triage.pacs.report import read_sr_result
from helpers.acceptance import (
    ECHOSCU,
    FINDSCU,
    ORTHANC_DICOM,
    ORTHANC_HTTP,
    STORESCU,
    Listener,
)
from helpers.netns import NetNamespace
from helpers.pacs import CALLING_AE, SALT

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DICOMWEB = f"http://127.0.0.1:{ORTHANC_HTTP}/dicom-web"
SIIM = "txv_siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
# Every file of ../shared/data/dicom, what the listener must do with it, and why.
EXPECTED = {
    "CT_small.dcm": "refused_at_association",  # CT Image Storage: no presentation context
    "JPEG2000.dcm": "wrong_modality",  # Secondary Capture whose Modality is NM
    "MR_small_RLE.dcm": "refused_at_association",  # MR Image Storage
    "MR_truncated.dcm": "not_sent",  # pixel data cut short: storescu will not read it
    "RG1_UNCR.dcm": "triaged",  # PA chest CR
    "SC_rgb_jpeg_dcmtk.dcm": "wrong_modality",  # Secondary Capture whose Modality is OT
    "emri_small.dcm": "refused_at_association",  # Enhanced MR Image Storage
    "reportsi.dcm": "refused_at_association",  # Basic Text SR Storage
    "txv_Fake_MONOHR1.dcm": "triaged",  # SC whose Modality is CR, JPEG baseline
    SIIM: "duplicate",  # same SOP Instance UID as txv_Fake_MONOHR1: not triaged again
    "derived/cxr_RG1half_no_pixeldata.dcm": "no_pixel_data",  # in RG1's study
    "derived/not_dicom_random_bytes.dcm": "not_sent",  # storescu cannot read it
}
# storescu proposes uncompressed syntaxes only unless told (STACK-wave2.md §2)
_TS_FLAG = {"1.2.840.10008.1.2.4.50": ["-xy"], "1.2.840.10008.1.2.4.91": ["-xw"],
            "1.2.840.10008.1.2.5": ["-xr"]}  # fmt: skip


def storescu(ns: NetNamespace, files: list[Path], port: int, *, calling: str = CALLING_AE,
             called: str = "CXRTRIAGE") -> str:  # fmt: skip
    """storescu -v with only the files' own SOP classes proposed; its whole output."""
    flags: list[str] = []
    for path in files:
        try:
            ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        except Exception:  # noqa: BLE001 - not DICOM: storescu itself will say so
            ts = ""
        flags = _TS_FLAG.get(ts, flags)
    cmd = [STORESCU, "-v", "-R", *flags, "-aet", calling, "-aec", called, "127.0.0.1",
           str(port), *files]  # fmt: skip
    out = ns.run(cmd)
    return out.stdout + out.stderr


def synthetic_study(tiny_pipeline, dest: Path, views: list[str], seed: int = 0) -> list[Path]:
    """One study of synthetic DX radiographs, one file per view, with fake patient data."""
    images = sorted((Path(tiny_pipeline.params.paths.synth_dir) / "hospital_c").rglob("*.dcm"))
    study, patient = generate_uid(), f"SYNPAT{seed:04d}"
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for n, view in enumerate(views):
        ds = pydicom.dcmread(images[(seed * 7 + n) % len(images)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName, ds.ViewPosition = patient, f"Doe^Jane{seed}", view
        ds.AccessionNumber = f"ACCN{seed:05d}"
        path = dest / f"study{seed}-{n}-{view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def outcome_of(output: str) -> str:
    if "Received Store Response (Success)" in output:
        return "acknowledged"
    if "No presentation context" in output or "No Acceptable Presentation Contexts" in output:
        return "refused_at_association"
    return "not_sent"


def identifiers(paths: list[Path]) -> set[str]:
    """The identifying values of files (what must never leave them)."""
    keys = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
            "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
            "ReferringPhysicianName")  # fmt: skip
    out = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out |= {str(ds.get(k, "") or "") for k in keys}
    return {value for value in out if len(value) >= 4}


def predict(package: Path, files: list[Path], out: Path) -> dict[str, float]:
    """``cxr-triage predict`` on the files: probability by SOP Instance UID."""
    subprocess.run([sys.executable, "-m", "cxr_triage.cli", "predict", *map(str, files),
                    "--package", str(package), "--out", str(out)], capture_output=True,
                   timeout=600)  # fmt: skip
    table = pd.read_csv(out)
    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): float(prob)
        for p, prob in zip(table["path"], table["prob_abnormal"], strict=True)
        if not np.isnan(prob)
    }


def test_every_shared_file_and_a_study_through_storescu(
    netns, orthanc, listener, worklist, shared_data, tiny_pipeline, tmp_path
) -> None:
    source = shared_data / "dicom"
    files = {name: source / name for name in EXPECTED}
    assert sorted(files) == sorted(str(p.relative_to(source)) for p in source.rglob("*.dcm")), (
        "a file was added to ../shared/data/dicom: give it an expected outcome"
    )
    # the original study is in the PACS before the result arrives
    assert "Success" in storescu(netns, [files["RG1_UNCR.dcm"]], ORTHANC_DICOM, called="ORTHANC")
    outcomes: dict[str, str] = {}
    seen: dict[str, str] = {}
    pseudonyms = Pseudonymiser(SALT)
    for name in sorted(EXPECTED):  # txv_Fake_MONOHR1 before txv_siim: the latter repeats it
        sent = outcome_of(storescu(netns, [files[name]], listener.port))
        if sent == "acknowledged":
            uid = str(pydicom.dcmread(files[name], stop_before_pixels=True).SOPInstanceUID)
            key = pseudonyms.image(uid)
            sent = "duplicate" if key in seen else key
            seen.setdefault(key, name)
        outcomes[name] = sent
    study = synthetic_study(tiny_pipeline, tmp_path / "study", ["PA", "AP", "LL"])
    output = storescu(netns, study, listener.port)
    assert output.count("Received Store Response (Success)") == 3, output

    # three studies with a result, each for Orthanc and the worklist webhook
    spool = listener.wait(lambda s: not s.pending(1) and s.counts()["deliveries"] == {"sent": 6})
    rows = {row.key: row for row in spool.instances()}
    for name, outcome in outcomes.items():
        if outcome in rows:
            row = rows[outcome]
            outcomes[name] = "triaged" if row.state == "triaged" else str(row.reason)
    assert outcomes == EXPECTED
    counts = spool.counts()
    table = pd.Series(list(EXPECTED.values())).value_counts().to_dict()
    assert counts["instances"] == {"triaged": table["triaged"] + 2, "refused": 3 + 1}
    assert counts["refused_by_reason"] == {"wrong_modality": 2, "no_pixel_data": 1,
                                           "not_frontal": 1}  # fmt: skip
    assert counts["events"]["contexts_refused"] == table["refused_at_association"]
    assert counts["events"]["duplicate"] == table["duplicate"]
    assert sum(table.values()) == len(EXPECTED) == 12  # every file has exactly one outcome

    # each result reached Orthanc in its original study, valid, with predict's probability
    probs = predict(tiny_pipeline.package_dir,
                    [files["RG1_UNCR.dcm"], files["txv_Fake_MONOHR1.dcm"], *study[:2]],
                    tmp_path / "predict.csv")  # fmt: skip
    expected_refs = {
        str(pydicom.dcmread(files["RG1_UNCR.dcm"]).StudyInstanceUID): [files["RG1_UNCR.dcm"]],
        str(pydicom.dcmread(files[SIIM]).StudyInstanceUID): [files["txv_Fake_MONOHR1.dcm"]],
        str(pydicom.dcmread(study[0]).StudyInstanceUID): study[:2],
    }
    for result in spool.results():
        (instance,) = orthanc.find(SOPInstanceUID=result.sr_uid)
        path = orthanc.file(instance, tmp_path / f"{result.id}.dcm")
        check = netns.run(["dciodvfy", path])
        assert "Error" not in check.stdout + check.stderr and check.returncode == 0, check.stderr
        sr = pydicom.dcmread(path)
        refs = [str(pydicom.dcmread(p).SOPInstanceUID) for p in expected_refs[sr.StudyInstanceUID]]
        content = read_sr_result(sr)
        assert content["referenced"] == refs
        assert content["prob_abnormal"] == pytest.approx(max(probs[r] for r in refs), abs=1e-6)
    rg1_study = str(pydicom.dcmread(files["RG1_UNCR.dcm"]).StudyInstanceUID)
    found = netns.run([FINDSCU, "-S", "-aet", "FINDSCU", "-aec", "ORTHANC", "127.0.0.1",
                    str(ORTHANC_DICOM), "-k", "QueryRetrieveLevel=STUDY", "-k",
                    f"StudyInstanceUID={rg1_study}", "-k", "ModalitiesInStudy"])  # fmt: skip
    assert "CR\\SR" in found.stdout + found.stderr, found.stderr  # one study: image and result

    entries = [json.loads(line) for line in worklist.read_text().splitlines()]
    assert sorted(e["study_instance_uid"] for e in entries) == sorted(expected_refs)
    for entry in entries:
        assert entry["priority"] == ("high" if entry["label"] == "abnormal" else "routine")
        assert entry["model_tag"] == spool.results()[0].model_tag

    # no identifier in the logs, the prediction log or the spool's own metadata
    leaks = identifiers([files[n] for n in EXPECTED if not n.startswith("derived/not")] + study)
    state = listener.root / "state"
    listener_log = listener.log.read_text()
    databases = b"".join(p.read_bytes() for p in state.rglob("*.sqlite*"))
    names = " ".join(str(p.relative_to(state)) for p in state.rglob("*"))
    for value in leaks:
        assert value not in listener_log, f"{value!r} in the listener's log"
        assert value.encode() not in databases, f"{value!r} in a database"
        assert value not in names, f"{value!r} in a spool file name"
    assert list((state / "spool" / "incoming").iterdir()) == []  # received files deleted


def test_unknown_ae_unsupported_class_and_non_dicom_client_are_refused(
    netns, listener, shared_data
) -> None:
    rg1 = shared_data / "dicom" / "RG1_UNCR.dcm"
    output = storescu(netns, [rg1], listener.port, calling="STRANGER")
    assert "Association Rejected" in output and "Calling AE Title Not Recognized" in output
    output = storescu(netns, [shared_data / "dicom" / "CT_small.dcm"], listener.port)
    assert outcome_of(output) == "refused_at_association", output
    garbage = (
        f"import socket; s = socket.create_connection(('127.0.0.1', {listener.port})); "
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n' + bytes(range(256)) * 64); s.settimeout(10)\n"
        "try: s.recv(100)\nexcept OSError: pass"
    )
    assert netns.run([sys.executable, "-c", garbage]).returncode == 0
    echo = netns.run([ECHOSCU, "-v", "-aet", CALLING_AE, "-aec", "CXRTRIAGE", "127.0.0.1",
                   str(listener.port)])  # fmt: skip
    assert "Received Echo Response (Success)" in echo.stdout + echo.stderr
    assert listener.process.poll() is None
    events = listener.spool.counts()["events"]
    assert events["association_rejected"] >= 1 and events["contexts_refused"] >= 2


def test_results_queue_while_orthanc_is_down_and_arrive_once(
    netns, orthanc, tiny_pipeline, tmp_path
) -> None:
    listener = Listener(netns, tmp_path, tiny_pipeline.package_dir, 11113)
    listener.start()
    try:
        orthanc.stop()
        studies = [synthetic_study(tiny_pipeline, tmp_path / "in", ["PA"], seed=s) for s in (1, 2)]
        for files in studies:
            assert "Success" in storescu(netns, files, listener.port)
        spool = listener.wait(
            lambda s: len(s.results()) == 2 and s.counts()["attempts"].get("failed", 0) >= 4
        )
        first_uids = {r.id: r.sr_uid for r in spool.results()}
        assert all(d.state == "pending" for d in spool.deliveries())
        orthanc.start()
        spool = listener.wait(lambda s: s.counts()["deliveries"] == {"sent": 2})
    finally:
        assert listener.stop() == 0
    assert {r.id: r.sr_uid for r in spool.results()} == first_uids
    attempts = pd.DataFrame(spool.attempts())
    for _, group in attempts.groupby("result_id"):
        assert list(group["ok"])[-1] == 1 and group["ok"].sum() == 1  # failures, then one
        assert (group["ok"] == 0).sum() >= 2
    for files, uid in zip(studies, first_uids.values(), strict=True):
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        assert (
            orthanc.find(SOPInstanceUID=uid)
            and len(orthanc.find(StudyInstanceUID=study_uid, Modality="SR")) == 1
        )


def test_sigkill_between_receipt_and_triage_loses_nothing(netns, orthanc, tiny_pipeline,
                                                          tmp_path) -> None:  # fmt: skip
    listener = Listener(netns, tmp_path, tiny_pipeline.package_dir, 11114)
    listener.start("--receive-only")
    files = synthetic_study(tiny_pipeline, tmp_path / "in", ["PA", "AP"], seed=3)
    files += synthetic_study(tiny_pipeline, tmp_path / "in", ["PA"], seed=4)
    output = storescu(netns, files, listener.port)
    assert output.count("Received Store Response (Success)") == 3, output
    acknowledged = {Pseudonymiser(SALT).image(str(pydicom.dcmread(f).SOPInstanceUID))
                    for f in files}  # fmt: skip

    # a large instance, the listener killed while it is still arriving: never acknowledged.
    # The sender is frozen (SIGSTOP) once the listener's socket has taken its first megabyte,
    # so the kill lands mid-transfer whatever the machine's speed.
    big = tmp_path / "big.dcm"
    ds = pydicom.dcmread(files[0])
    ds.Rows = ds.Columns = 5000
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = np.random.default_rng(0).integers(0, 4095, (5000, 5000), np.uint16).tobytes()
    ds.save_as(big, enforce_file_format=True)
    cmd = [STORESCU, "-v", "-R", "-aet", CALLING_AE, "-aec", "CXRTRIAGE", "127.0.0.1",
           str(listener.port), big]  # fmt: skip
    sender = netns.popen(cmd, log=open(tmp_path / "big.log", "w"))
    deadline = time.monotonic() + 60
    while _bytes_received(netns, listener.port) < 2**20:
        assert time.monotonic() < deadline and sender.poll() is None, "the transfer never began"
        time.sleep(0.002)
    os.kill(sender.pid, signal.SIGSTOP)
    assert _bytes_received(netns, listener.port) < big.stat().st_size  # frozen half-way
    listener.process.kill()
    listener.process.wait()
    sender.kill()
    sender.wait()
    assert "Received Store Response" not in (tmp_path / "big.log").read_text()
    assert {r.key for r in listener.spool.instances("received")} == acknowledged

    listener.start()  # receiver, worker and sender
    spool = listener.wait(lambda s: len(s.results()) == 2 and not s.pending(1))
    assert listener.stop() == 0
    assert {r.key for r in spool.instances("triaged")} == acknowledged
    assert len(spool.instances()) == len(acknowledged)
    assert not list((tmp_path / "state" / "spool").rglob(".*.part"))


def _bytes_received(ns: NetNamespace, port: int) -> int:
    """Bytes the listener's established connections on ``port`` have received (``ss -i``)."""
    out = ns.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"]).stdout
    return sum(int(n) for n in re.findall(r"bytes_received:(\d+)", out))


def test_pull_a_study_over_dicomweb_and_stow_the_result(netns, orthanc, shared_data, tiny_pipeline,
                                                        tmp_path) -> None:  # fmt: skip
    rg1 = shared_data / "dicom" / "RG1_UNCR.dcm"
    assert "Success" in storescu(netns, [rg1], ORTHANC_DICOM, called="ORTHANC")
    study_uid = str(pydicom.dcmread(rg1, stop_before_pixels=True).StudyInstanceUID)
    env = {**os.environ, "CXR_TRIAGE_SALT": SALT, "CXR_TRIAGE_STATE_DIR": str(tmp_path / "state"),
           "CXR_TRIAGE_PACS_STOW_URL": DICOMWEB}  # fmt: skip
    before = len(orthanc.find(StudyInstanceUID=study_uid, Modality="SR"))
    out = netns.run([sys.executable, "-m", "cxr_triage.cli", "pull", study_uid, "--from", DICOMWEB,
                  "--package", tiny_pipeline.package_dir], env=env, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["stored"] == 1 and summary["triaged"] == 1
    assert summary["result"]["deliveries"] == {f"stow:{DICOMWEB}": "sent"}
    probs = predict(tiny_pipeline.package_dir, [rg1], tmp_path / "p.csv")
    assert summary["result"]["prob_abnormal"] == pytest.approx(next(iter(probs.values())))
    assert len(orthanc.find(StudyInstanceUID=study_uid, Modality="SR")) == before + 1
    assert orthanc.find(SOPInstanceUID=summary["result"]["sr_sop_instance_uid"])

    # the ingestion flow's DICOMweb source: labelled studies into an incoming batch
    labels = tmp_path / "labels.csv"
    labels.write_text(f"study_instance_uid,label,site\n{study_uid},abnormal,hospital_a\n")
    script = ("import sys; from cxr_triage.pacs.dicomweb import fetch_labelled_studies as f; "
              "print(f(sys.argv[1], sys.argv[2], sys.argv[3]))")  # fmt: skip
    out = netns.run([sys.executable, "-c", script, DICOMWEB, labels, tmp_path / "incoming"])
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(tmp_path / "incoming" / "labels.csv")
    assert list(table["image"]) == [f"{study_uid}/{pydicom.dcmread(rg1).SOPInstanceUID}.dcm"]
    from cxr_triage.orchestration.rawdata import add_batch_to_raw

    batch = add_batch_to_raw(tmp_path / "incoming", tmp_path / "raw", salt=SALT)
    assert len(batch.accepted) == 1 and batch.rejected == []


def test_a_full_disk_answers_out_of_resources_never_success(
    netns, tiny_pipeline, tmp_path
) -> None:
    """The spool on a 20 MiB tmpfs (a mount namespace of the listener's own): once full, the
    listener refuses with 0xA700, keeps running, and takes what fits again."""
    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True)
    listener = Listener(netns, tmp_path, tiny_pipeline.package_dir, 11115)
    python = f"{sys.executable} -m cxr_triage.cli listen --receive-only"
    mount = f"mount -t tmpfs -o size=20m tmpfs {spool} && exec {python}"
    listener.process = netns.popen(["unshare", "-m", "sh", "-c", mount],
                                log=open(listener.log, "a"), env=listener.env)  # fmt: skip
    echo = [ECHOSCU, "-aet", CALLING_AE, "-aec", "CXRTRIAGE", "127.0.0.1", str(listener.port)]
    netns.wait_for(echo, what="listener on a tmpfs spool")
    big = []
    for n in range(3):  # 8 MB each: two fit, the third does not
        ds = pydicom.dcmread(
            synthetic_study(tiny_pipeline, tmp_path / "in", ["PA"], seed=10 + n)[0]
        )
        ds.Rows = ds.Columns = 2000
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelData = np.full((2000, 2000), 1000, np.uint16).tobytes()
        big.append(tmp_path / f"big{n}.dcm")
        ds.save_as(big[-1], enforce_file_format=True)
    answers = [storescu(netns, [path], listener.port) for path in big]
    small = synthetic_study(tiny_pipeline, tmp_path / "in", ["PA"], seed=20)
    answers.append(storescu(netns, small, listener.port))
    try:
        assert [outcome_of(a) for a in answers[:2]] == ["acknowledged"] * 2, answers
        assert "Success" not in answers[2] and "OutOfResources" in answers[2], answers[2]
        assert outcome_of(answers[3]) == "acknowledged", answers[3]  # what fits is taken again
        assert netns.run(echo).returncode == 0
    finally:
        assert listener.stop() == 0, listener.log.read_text()
    assert "out of resources (0xA700)" in listener.log.read_text()
