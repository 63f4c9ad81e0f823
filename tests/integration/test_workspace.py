"""The Evidently workspace a drift check writes: dashboard panels, tagged runs, tiles' names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_triage.monitoring import CurrentData, check_drift
from cxr_triage.monitoring.dashboard import panel_titles
from helpers.drift_inputs import feature_rows, params_for, reference_frame
from helpers.pipeline import stub_package

pytestmark = pytest.mark.integration


def test_every_project_gets_panels_and_every_run_its_tags_and_named_tiles(tmp_path):
    from evidently.ui.workspace import Workspace

    params = params_for(tmp_path)
    package = stub_package(tmp_path / "package", reference_frame())
    runs = [
        check_drift(
            params,
            CurrentData(feature_rows(60, site="hospital_a", seed=seed, shift=shift)),
            package=package,
            site="hospital_a",
            out_dir=tmp_path / "monitor",
        )
        for seed, shift in ((21, 0.0), (22, 0.08))
    ]

    reports = runs[-1].reports
    workspace = Workspace.create(reports.workspace)
    project = workspace.get_project(reports.project_id)
    panels = [p.title for p in project.dashboard.model().panels]
    assert panels == panel_titles("hospital_a", params.monitor)  # created once, not twice
    snapshot = json.loads(
        next(Path(reports.workspace).rglob(f"snapshots/{reports.run_id}.json")).read_text()
    )
    assert snapshot["tags"] == ["site:hospital_a", "model:cxr-triage:stub", "verdict:drift"]
    assert snapshot["metadata"]["window"] == "rows in hand"
    titles = [w["title"] for w in snapshot["widgets"] if w["type"] == "counter"]
    assert "Drifted columns" in titles and "Prediction (prob_abnormal) distribution" in titles
    assert not any(t.startswith("Count of Drifted Columns") for t in titles)
    counters = {w["title"]: w["params"]["counters"][0]["value"] for w in snapshot["widgets"]
                if w["type"] == "counter" and w["title"]}  # fmt: skip
    verdict = runs[-1].verdict
    assert counters["Drifted columns"] == f"{len(verdict.drifted_columns)} of {verdict.n_columns}"
    assert [t.name for t in verdict.tests] == [
        "Share of drifted columns < 0.3",
        "Prediction (prob_abnormal) did not drift",
        f"Embedding drift (MMD) <= {verdict.embedding_drift.threshold:.3g}",
    ]


def test_report_retention_deletes_expired_runs_from_the_workspace_too(tmp_path):
    from datetime import UTC, datetime, timedelta

    from evidently.ui.workspace import Workspace

    from cxr_triage.config import MonitorParams
    from cxr_triage.monitoring.retention import apply_retention

    params = params_for(tmp_path)
    out = tmp_path / "monitor"
    summary = check_drift(
        params,
        CurrentData(feature_rows(60, site="hospital_a", seed=31)),
        package=stub_package(tmp_path / "package", reference_frame()),
        site="hospital_a",
        out_dir=out,
    )
    later = datetime.now(UTC) + timedelta(days=31)

    deleted = apply_retention(
        MonitorParams(report_retention_days=30), out_dir=out, log_path=None, now=later
    )

    assert deleted["runs"] == 1 and deleted["workspace_runs"] == 1
    assert not summary.json_path.parent.exists()
    runs = Workspace.create(str(out / "workspace")).list_runs(summary.reports.project_id)
    assert summary.reports.run_id not in [str(r) for r in runs]
