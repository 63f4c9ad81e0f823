"""Backups of the prediction log, and retention of the log and the monitoring reports."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cxr_triage.cli import app
from cxr_triage.config import MonitorParams, parse_section
from cxr_triage.errors import ConfigError, DataError
from cxr_triage.inference.feedback import parse_reads, record_feedback
from cxr_triage.inference.predlog import PredictionLog, backup_log
from cxr_triage.monitoring import LogWindow, check_drift
from cxr_triage.monitoring.retention import apply_retention, expired_runs
from cxr_triage.state import state_layout
from helpers.commands import runner

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def rows(n: int, *, start: int = 0, ts: datetime | None = None) -> list[dict]:
    stamp = {"ts": ts.isoformat(timespec="microseconds")} if ts else {}
    return [
        {"request_id": f"r{i}", "model_tag": "cxr-triage:x", "threshold": 0.5,
         "prob_abnormal": 0.1, **stamp}
        for i in range(start, start + n)
    ]  # fmt: skip


def counts(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(path)
    try:
        return tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                     for t in ("predictions", "feedback"))  # fmt: skip
    finally:
        db.close()


def test_backup_copies_predictions_and_reads_while_the_service_writes(tmp_path):
    path = tmp_path / "predictions.sqlite"
    log = PredictionLog(path)
    log.append(rows(200))
    record_feedback(parse_reads([{"request_id": "r1", "label": "abnormal"}]), log_path=path)
    writing = threading.Event()

    def service() -> None:  # another writer, as the service's workers are
        writer = PredictionLog(path)
        for batch in range(20):
            writer.append(rows(10, start=1000 + 10 * batch))
            writing.set()
        writer.close()

    thread = threading.Thread(target=service)
    thread.start()
    writing.wait(10)
    backup, n_predictions, n_reads = backup_log(path, tmp_path / "backups")
    thread.join()

    assert backup.parent == tmp_path / "backups" and backup.name.startswith("predictions-")
    assert 200 <= n_predictions <= 400 and n_reads == 1  # a consistent point in between
    assert counts(backup) == (n_predictions, 1)
    assert not list(backup.parent.glob(".*tmp*"))  # nothing half-written left
    log.close()


def test_cli_backup_defaults_to_the_state_folder_and_refuses_a_missing_log(tmp_path):
    PredictionLog(state_layout().prediction_log).append(rows(3))

    done = runner.invoke(app, ["backup"])
    missing = runner.invoke(app, ["backup", "--log", str(tmp_path / "none.sqlite")])

    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("backed up 3 predictions and 0 reads to ")
    assert str(state_layout().backup_dir) in done.stdout
    assert missing.exit_code == 1 and "nothing to back up" in missing.stderr


def run_folder(runs: Path, started: datetime, site: str = "hospital_a") -> Path:
    folder = runs / f"{started.strftime('%Y%m%dT%H%M%SZ')}-{site}"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"reports": {}}))
    return folder


def test_report_retention_deletes_old_run_folders_only(tmp_path):
    runs = tmp_path / "monitor" / "runs"
    old = run_folder(runs, NOW - timedelta(days=40))
    recent = run_folder(runs, NOW - timedelta(days=5))
    (runs / "notes").mkdir()  # not a run folder: left alone
    monitor = MonitorParams(report_retention_days=30)

    deleted = apply_retention(monitor, out_dir=tmp_path / "monitor", log_path=None, now=NOW)

    assert deleted == {"runs": 1, "workspace_runs": 0, "predictions": 0, "reads": 0}
    assert not old.exists() and recent.exists() and (runs / "notes").exists()
    assert expired_runs(runs, before=NOW) == [recent]


def test_log_retention_deletes_old_predictions_and_reads(tmp_path):
    path = tmp_path / "predictions.sqlite"
    log = PredictionLog(path)
    log.append(rows(2, ts=NOW - timedelta(days=100)) + rows(3, start=2, ts=NOW))
    log.close()
    record_feedback(parse_reads([{"request_id": "r0", "label": "normal"}]), log_path=path)
    monitor = MonitorParams(log_retention_days=30)

    kept = apply_retention(monitor, out_dir=tmp_path, log_path=path, now=NOW)
    later = apply_retention(monitor, out_dir=tmp_path, log_path=path, now=NOW + timedelta(1000))

    assert (kept["predictions"], kept["reads"]) == (2, 0)  # the read was received just now
    assert (later["predictions"], later["reads"]) == (3, 1)
    assert counts(path) == (0, 0)
    nothing = apply_retention(monitor, out_dir=tmp_path, log_path=tmp_path / "none.sqlite")
    assert nothing["predictions"] == 0 and not (tmp_path / "none.sqlite").exists()


def test_default_retention_keeps_everything_and_bad_values_are_refused(tmp_path):
    runs = tmp_path / "runs"
    old = run_folder(runs, NOW - timedelta(days=4000))
    assert not any(apply_retention(MonitorParams(), out_dir=tmp_path, log_path=None).values())
    assert old.exists()
    with pytest.raises(ConfigError, match="monitor.log_retention_days must be >= 1 day"):
        parse_section(MonitorParams, {"log_retention_days": 0}, "monitor")
    assert parse_section(MonitorParams, {"report_retention_days": 365}, "monitor")


def test_a_drift_check_of_the_log_applies_retention_and_says_so(tmp_path):
    from helpers.drift_inputs import feature_rows, params_for, reference_frame
    from helpers.pipeline import stub_package

    path = tmp_path / "predictions.sqlite"
    log = PredictionLog(path)
    old = [
        {**row, "request_id": f"old{i}", "model_tag": "cxr-triage:stub", "threshold": 0.5,
         "ts": "2020-01-01T00:00:00+00:00"}
        for i, row in enumerate(feature_rows(4, site="hospital_a", seed=1).to_dict("records"))
    ]  # fmt: skip
    log.append(old)
    log.close()
    params = params_for(tmp_path)
    params = dataclasses.replace(params, monitor=MonitorParams(log_retention_days=365))
    package = stub_package(tmp_path / "package", reference_frame())

    summary = check_drift(params, LogWindow(path), package=package, out_dir=tmp_path / "m")

    assert summary.n_current == 4  # read first, then pruned
    assert summary.retention["predictions"] == 4 and counts(path)[0] == 0
    assert json.loads(summary.json_path.read_text())["retention"]["predictions"] == 4


def test_backup_refuses_an_unwritable_destination(tmp_path):
    path = tmp_path / "predictions.sqlite"
    PredictionLog(path).append(rows(1))
    (tmp_path / "file").write_text("x")
    with pytest.raises((ConfigError, DataError), match="cannot write the backup"):
        backup_log(path, tmp_path / "file" / "backup.sqlite")
