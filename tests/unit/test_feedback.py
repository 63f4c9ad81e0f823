"""Ground truth: fed-back reads stored beside the prediction log; realised performance."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cxr_triage.cli import EXIT_SENSITIVITY, app
from cxr_triage.config import Params, parse_section
from cxr_triage.data.ingest import ingest_source
from cxr_triage.errors import ConfigError, DataError
from cxr_triage.inference.feedback import (
    parse_reads,
    read_feedback_csv,
    record_feedback,
    study_key,
    write_ingestion_labels,
)
from cxr_triage.inference.predlog import PredictionLog
from cxr_triage.monitoring import LogWindow, check_drift
from cxr_triage.orchestration.alerts import AlertSettings
from cxr_triage.orchestration.events import PERFORMANCE_EVENT, performance_event
from helpers.commands import runner
from helpers.drift_inputs import STUB_TAG, logged_rows
from helpers.pipeline import REPO, tiny_params_data

SALT = "unit-test-salt-0123456789abcdef"


def reads_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def truthful_reads(rows: list[dict], *, missed: int = 0) -> list[dict]:
    """Reads agreeing with the model, except ``missed`` studies it called normal: abnormal."""
    reads, flipped = [], 0
    for row in rows:
        label = row["label"]
        if label == "normal" and flipped < missed:
            label, flipped = "abnormal", flipped + 1
        reads.append({"request_id": row["request_id"], "label": label})
    return reads


def test_reads_are_keyed_by_request_or_by_a_study_digest_never_the_uid():
    uid = "1.2.826.0.1.3680043.8.498.1234"

    request, study = parse_reads(
        [
            {"request_id": "abc", "label": "Abnormal", "findings": "Effusion|Mass"},
            {"Study Instance UID": uid, "findings": "No Finding", "label": "normal"},
        ],
        salt=SALT,
    )

    assert request.key == ("request_id", "abc") and request.findings == ("Effusion", "Mass")
    assert study.key == ("study_key", study_key(uid, SALT)) and uid not in study.key[1]
    assert study.label == "normal" and study.findings == ()
    assert parse_reads([{"request_id": "x", "findings": "Nodule"}])[0].label == "abnormal"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"label": "normal"}, "request_id .* or study_uid, exactly one"),
        ({"request_id": "a", "study_uid": "1.2", "label": "normal"}, "exactly one"),
        ({"request_id": "a", "label": "maybe"}, "neither normal nor abnormal"),
        ({"request_id": "a", "findings": "Broken Rib"}, "unknown finding"),
        ({"request_id": "a", "label": "normal", "findings": "Mass"}, "normal with findings"),
        ({"request_id": "a"}, "no label"),
    ],
)
def test_invalid_reads_are_refused_with_their_line(record, message, tmp_path):
    path = reads_csv(tmp_path / "reads.csv", [{"request_id": "ok", "label": "normal"}, record])
    with pytest.raises(DataError, match=f"reads.csv line 3: .*{message}"):
        read_feedback_csv(path)


def test_study_uids_need_the_salt(monkeypatch):
    monkeypatch.delenv("CXR_TRIAGE_SALT", raising=False)
    with pytest.raises(ConfigError, match="CXR_TRIAGE_SALT"):
        parse_reads([{"study_uid": "1.2.3", "label": "normal"}])


def test_record_feedback_counts_matches_and_a_later_read_replaces(log_path):
    reads = parse_reads(
        [{"request_id": "r1", "label": "abnormal"}, {"request_id": "nope", "label": "normal"}]
    )

    receipt = record_feedback(reads, log_path=log_path)

    assert (receipt.n_stored, receipt.n_matched, receipt.unmatched) == (2, 1, ["request_id=nope"])
    record_feedback(parse_reads([{"request_id": "r1", "label": "normal"}]), log_path=log_path)
    log = PredictionLog(log_path)
    window = log.read(with_feedback=True)
    assert log.feedback_count() == 2 and len(window) == 120  # replaced, not added
    assert window.set_index("request_id").loc["r1", "true_label"] == "normal"
    assert window["true_label"].notna().sum() == 1
    log.close()


def test_reads_by_study_match_predictions_that_logged_the_study_key(tmp_path):
    path = tmp_path / "log.sqlite"
    log = PredictionLog(path)
    rows = logged_rows(2)
    rows[0]["study_key"] = study_key("1.2.3.4", SALT)  # how the service logs a DICOM's study
    log.append(rows)

    receipt = record_feedback(
        parse_reads([{"study_uid": "1.2.3.4", "label": "abnormal"}], salt=SALT), log_path=path
    )

    assert receipt.n_matched == 1
    labels = log.read(with_feedback=True).set_index("request_id")["true_label"]
    assert labels["r0"] == "abnormal" and pd.isna(labels["r1"])
    log.close()


def test_fed_back_reads_become_realised_sensitivity_and_an_alert_when_it_falls(
    log_path, feedback_package_dir, feedback_params, tmp_path
):
    rows = logged_rows(120)
    record_feedback(parse_reads(truthful_reads(rows)), log_path=log_path)

    good = check_drift(
        feedback_params, LogWindow(log_path), package=feedback_package_dir, out_dir=tmp_path / "m"
    )

    perf = good.performance
    assert good.status == "insufficient_data"  # the drift check needs more rows; reads graded
    assert perf.status == "ok" and perf.n_labelled == 120 and perf.threshold == 0.5
    assert perf.sensitivity.estimate == 1.0 and perf.specificity.estimate == 1.0
    assert perf.target_sensitivity == 0.95 and perf.target_source == "package operating point"
    assert not good.performance_alert

    # Radiologists find 15 abnormal studies among those the model called normal.
    record_feedback(parse_reads(truthful_reads(rows, missed=15)), log_path=log_path)
    bad = check_drift(
        feedback_params, LogWindow(log_path), package=feedback_package_dir, out_dir=tmp_path / "m"
    )

    perf = bad.performance
    n_abnormal = sum(r["label"] == "abnormal" for r in rows) + 15
    assert perf.n_abnormal == n_abnormal and perf.confusion["fn"] == 15
    assert perf.sensitivity.estimate == pytest.approx((n_abnormal - 15) / n_abnormal)
    assert perf.sensitivity.low < perf.sensitivity.estimate < perf.sensitivity.high
    assert perf.status == "below_target" and bad.performance_alert
    assert "realised sensitivity 0.7" in bad.one_line()
    summary = json.loads(bad.json_path.read_text())
    assert summary["performance_alert"] is True
    assert summary["performance"]["sensitivity"]["low"] == perf.sensitivity.low

    event = performance_event(summary, settings=AlertSettings(), flow_run_id="run-1")
    assert event["event"] == PERFORMANCE_EVENT
    assert event["payload"]["title"] == (
        f"[cxr-triage] sensitivity below target at hospital_a, model {STUB_TAG}"
    )
    assert "against the target 0.95 (package operating point)" in event["payload"]["text"]


def test_few_reads_are_insufficient_feedback_not_an_alert(
    log_path, feedback_package_dir, feedback_params, tmp_path
):
    rows = logged_rows(120)[:10]
    record_feedback(parse_reads(truthful_reads(rows, missed=5)), log_path=log_path)

    summary = check_drift(
        feedback_params, LogWindow(log_path), package=feedback_package_dir, out_dir=tmp_path
    )

    assert summary.performance.status == "insufficient_feedback"
    assert "monitor.feedback_min_reads (20)" in summary.performance.reason
    assert not summary.performance_alert


def test_cli_feedback_then_monitor_exits_4_when_sensitivity_falls(
    log_path, feedback_package_dir, tmp_path
):
    rows = logged_rows(120)
    path = reads_csv(tmp_path / "reads.csv", truthful_reads(rows, missed=15))
    data = tiny_params_data(tmp_path)
    data["monitor"].update(min_current_rows=10_000, max_rows=10_000, feedback_n_boot=200)
    (tmp_path / "params.yaml").write_text(json.dumps(data))  # JSON is YAML

    stored = runner.invoke(app, ["feedback", str(path), "--log", str(log_path)])
    monitored = runner.invoke(
        app,
        ["monitor", "--log", str(log_path), "--package", str(feedback_package_dir),
         "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "m")],
    )  # fmt: skip

    assert stored.exit_code == 0, stored.output
    assert stored.stdout.strip() == "stored 120 reads; 120 match a logged prediction"
    assert monitored.exit_code == EXIT_SENSITIVITY, monitored.output
    assert "realised sensitivity" in monitored.stdout and "< target 0.95" in monitored.stdout


def test_cli_feedback_refuses_a_bad_file_in_one_line(tmp_path):
    path = reads_csv(tmp_path / "reads.csv", [{"request_id": "a", "label": "maybe"}])
    result = runner.invoke(app, ["feedback", str(path), "--log", str(tmp_path / "l.sqlite")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "line 2" in result.stderr


def test_exported_studies_get_labels_for_the_ingestion_flow(make_dicom, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_TRIAGE_SALT", SALT)
    export = tmp_path / "export"  # the studies as the PACS exported them
    export.mkdir()
    for name, uid in (("a.dcm", "1.2.3.1"), ("b.dcm", "1.2.3.2")):
        make_dicom(name=name, extra={"StudyInstanceUID": uid}).rename(export / name)
    (export / "notes.txt").write_text("not an image")
    path = reads_csv(
        tmp_path / "reads.csv",
        [
            {"study_uid": "1.2.3.1", "label": "abnormal", "findings": "Effusion"},
            {"request_id": "r9", "label": "normal"},  # names no image: ignored here
        ],
    )

    labels, n_labelled, n_without = write_ingestion_labels(path, export)

    table = pd.read_csv(labels)
    assert (n_labelled, n_without) == (1, 2)
    assert table.to_dict(orient="records") == [
        {"image": "a.dcm", "label": "abnormal", "finding": "Effusion"}
    ]
    # The folder is a `folder` source: what the ingestion flow reads from data/incoming/.
    summary = ingest_source("folder", export, tmp_path / "ingested", image_size=32, workers=1)
    assert summary.n_ingested == 1


def test_params_yaml_documents_the_feedback_settings():
    monitor = parse_section(Params, tiny_params_data(), "").monitor
    assert (monitor.feedback_min_reads, monitor.feedback_n_boot) == (20, 1000)
    assert (REPO / "params.yaml").read_text().count("feedback_") == 2
