"""Drift monitoring inputs, settings and the verdicts that need no Evidently report."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from cxr_triage.cli import app
from cxr_triage.config import MonitorParams, Params, load_params, parse_section
from cxr_triage.errors import ConfigError, DataError
from cxr_triage.inference.predlog import PredictionLog
from cxr_triage.monitoring import (
    CurrentData,
    DriftSummary,
    LogWindow,
    check_drift,
    current_from_log,
    load_reference,
)
from helpers.commands import runner
from helpers.drift_inputs import feature_rows
from helpers.pipeline import REPO


def run_monitoring(
    params: Params, *, current: pd.DataFrame, package_dir: Path, **options: object
) -> DriftSummary:
    """The drift check on rows in hand."""
    return check_drift(params, CurrentData(current), package=package_dir, **options)


def test_monitor_section_of_params_yaml_parses():
    monitor = load_params(REPO / "params.yaml").monitor
    assert monitor == MonitorParams()  # params.yaml documents the defaults
    assert monitor.retrain_on_drift is False
    assert monitor.embedding_method == "mmd"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"drift_share": 0}, "monitor.drift_share"),
        ({"calibration_margin": 0.5}, "monitor.calibration_margin"),
        ({"min_current_rows": 1}, "monitor.min_current_rows"),
        ({"embedding_method": "tsne"}, "mmd"),
        ({"retrain_on_drift": "yes"}, "monitor.retrain_on_drift: expected bool"),
        ({"drift_treshold": 0.3}, "unknown key monitor.drift_treshold"),
    ],
)
def test_monitor_params_refuse_bad_values(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_section(MonitorParams, data, "monitor")


def test_load_reference_of_a_folder_without_one_says_how_to_build_it(tmp_path):
    with pytest.raises(DataError, match="dvc repro package"):
        load_reference(tmp_path)


def test_run_monitoring_too_small_window_is_insufficient_data(
    drift_params, drift_package_dir, tmp_path
):
    out = tmp_path / "monitor"

    result = run_monitoring(
        drift_params, current=feature_rows(5, seed=7), package_dir=drift_package_dir, out_dir=out
    )

    assert result.status == "insufficient_data" and result.drift is False
    s = result.to_json()
    assert s["n_current"] == 5 and s["scope"] == "site hospital_a" and s["n_reference"] == 80
    assert "5 current rows < monitor.min_current_rows (30)" in s["reason"]
    assert s["failed_tests"] == [] and s["embedding_drift"]["score"] is None  # same keys
    assert result.one_line().startswith("INSUFFICIENT DATA: 5 current rows")
    assert json.loads(result.json_path.read_text()) == s
    page = result.html_path.read_text()
    assert "Insufficient data" in page and "http" not in page
    assert result.html_path.parent.parent == out / "runs"
    assert not (out / "workspace").exists()  # nothing to show in Evidently UI


def test_run_monitoring_empty_window_is_insufficient_data(
    drift_params, drift_package_dir, tmp_path
):
    result = run_monitoring(
        drift_params, current=pd.DataFrame(), package_dir=drift_package_dir, out_dir=tmp_path / "m"
    )

    assert result.status == "insufficient_data" and result.to_json()["n_current"] == 0
    assert result.to_json()["site"] is None and result.to_json()["scope"] == "all"


def test_run_monitoring_small_site_reference_falls_back_to_whole_reference(
    drift_params, drift_package_dir, tmp_path
):
    result = run_monitoring(
        drift_params,
        current=feature_rows(3, site="hospital_b"),
        package_dir=drift_package_dir,
        out_dir=tmp_path / "m",
    )

    s = result.to_json()
    assert s["site"] == "hospital_b" and s["scope"] == "all" and s["n_reference"] == 90
    assert "only 10 reference rows < monitor.min_reference_rows (50)" in s["scope_reason"]


def test_run_monitoring_site_keeps_only_its_rows(drift_params, drift_package_dir, tmp_path):
    current = pd.concat([feature_rows(4), feature_rows(6, site="hospital_b")], ignore_index=True)

    result = run_monitoring(
        drift_params,
        current=current,
        package_dir=drift_package_dir,
        site="hospital_b",
        out_dir=tmp_path,
    )

    s = result.to_json()
    assert s["n_current"] == 6 and s["n_current_other_sites"] == 4


def test_run_monitoring_refuses_a_site_the_current_data_lacks(
    drift_params, drift_package_dir, tmp_path
):
    with pytest.raises(DataError, match="no rows of site 'hospital_c'.*hospital_a"):
        run_monitoring(
            drift_params,
            current=feature_rows(40),
            package_dir=drift_package_dir,
            site="hospital_c",
            out_dir=tmp_path,
        )


def test_run_monitoring_refuses_rows_of_another_summary_layout(
    drift_params, drift_package_dir, tmp_path
):
    with pytest.raises(DataError, match="lacks monitoring columns emb_4.*summary_components"):
        run_monitoring(
            drift_params,
            current=feature_rows(40, k=4),
            package_dir=drift_package_dir,
            out_dir=tmp_path,
        )


def test_current_from_log_reads_a_window(tmp_path):
    path = tmp_path / "predictions.sqlite"
    log = PredictionLog(path)
    rows = feature_rows(3).to_dict(orient="records")
    log.append(
        [
            {**row, "request_id": f"r{i}", "model_tag": "cxr-triage:x", "threshold": 0.5}
            for i, row in enumerate(rows)
        ]
    )
    log.close()

    window = current_from_log(path, last=2)

    assert list(window["request_id"]) == ["r1", "r2"]
    assert window["prob_abnormal"].tolist() == pytest.approx(
        [r["prob_abnormal"] for r in rows[1:]]
    )
    assert len(current_from_log(path, since="2999-01-01")) == 0
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert len(current_from_log(path, since=hour_ago)) == 3  # a flow passes datetimes


def test_current_from_log_of_a_missing_log_is_empty_and_creates_nothing(tmp_path):
    assert current_from_log(tmp_path / "missing.sqlite").empty  # the first day: no log yet
    assert not (tmp_path / "missing.sqlite").exists()  # reading never creates a log
    with pytest.raises(ConfigError, match="ISO 8601"):  # the same refusals as with a log
        current_from_log(tmp_path / "missing.sqlite", since="yesterday")


def test_current_from_log_errors_say_what_to_do(tmp_path):
    PredictionLog(tmp_path / "log.sqlite").close()
    with pytest.raises(ConfigError, match="--last must be >= 1"):
        current_from_log(tmp_path / "log.sqlite", last=0)
    with pytest.raises(ConfigError, match="ISO 8601"):
        current_from_log(tmp_path / "log.sqlite", since="yesterday")


def test_cli_monitor_help_documents_the_exit_codes():
    result = runner.invoke(app, ["monitor", "--help"])
    assert result.exit_code == 0
    assert "3 drift detected" in result.output and "--images" in result.output


def test_cli_monitor_refuses_images_with_a_log_window(tmp_path):
    result = runner.invoke(
        app,
        [
            "monitor",
            "--images",
            str(tmp_path),
            "--last",
            "10",
            "--params",
            str(REPO / "params.yaml"),
        ],
    )
    assert result.exit_code == 1
    assert "give --images or --log/--since/--until/--last/--hours, not both" in result.stderr


def test_cli_monitor_missing_log_is_insufficient_data_and_says_why(drift_package_dir, tmp_path):
    missing = tmp_path / "none.sqlite"
    base = ["monitor", "--log", str(missing), "--package", str(drift_package_dir)]
    base += ["--params", str(REPO / "params.yaml"), "--out", str(tmp_path / "monitor")]

    result = runner.invoke(app, base)

    assert result.exit_code == 0, result.output  # no prediction yet: not an error
    assert result.stdout.startswith(f"INSUFFICIENT DATA: no prediction log at {missing} yet")
    summary = json.loads(runner.invoke(app, [*base, "--json"]).stdout)
    assert summary["status"] == "insufficient_data" and summary["n_current"] == 0
    assert summary["source"]["log_exists"] is False and "treated as empty" in summary["reason"]
    assert not missing.exists()


def test_log_window_options_are_the_clis(tmp_path):
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)

    window = LogWindow.from_options(hours=6, last=100, now=now)

    assert window.since == now - timedelta(hours=6) and window.last == 100
    described = window.describe()
    assert described["since"] == "2026-11-23T06:00:00+00:00" and described["kind"] == "log"
    with pytest.raises(ConfigError, match="--hours or --since, not both"):
        LogWindow.from_options(hours=6, since="2026-11-22")
    with pytest.raises(ConfigError, match="positive number of hours"):
        LogWindow.from_options(hours=0)


def test_run_monitoring_unknown_stat_test_is_a_config_error_and_leaves_nothing(
    drift_params, drift_package_dir, tmp_path
):
    drift_params = dataclasses.replace(drift_params, monitor=MonitorParams(num_method="nope"))
    out = tmp_path / "monitor"

    with pytest.raises(ConfigError, match="monitor.num_method: 'nope' is not an Evidently"):
        run_monitoring(
            drift_params, current=feature_rows(40), package_dir=drift_package_dir, out_dir=out
        )

    assert list((out / "runs").iterdir()) == []  # no half-written run, no temporary folder
