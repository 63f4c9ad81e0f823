"""Drift monitoring end to end: real images through the real Predictor, real Evidently reports.

The tiny pipeline's reference has only ~22 rows (about 11 per site), below
``monitor.min_reference_rows``; the module fixture adds 120 freshly generated hospital_a images,
scored by the package, so that a hospital_a batch is compared with hospital_a's own reference
rows.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cxr_triage.cli import app
from cxr_triage.inference.predictor import Predictor
from cxr_triage.inference.predlog import PredictionLog
from cxr_triage.monitoring import CurrentData, check_drift, current_from_images, load_reference
from helpers.commands import runner
from helpers.monitor_env import get_json, synth_images

pytestmark = pytest.mark.integration


def _assert_self_contained_html(path: Path) -> None:
    page = path.read_text(encoding="utf-8")
    assert len(page) > 100_000  # the Evidently page with its scripts and plots inlined
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?https?:", page, re.IGNORECASE)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?https?:", page, re.IGNORECASE)


def test_monitor_same_site_batch_is_no_drift(monitor_env):
    current, unreadable, non_images = current_from_images(
        monitor_env.package_dir, monitor_env.same_site, site="hospital_a"
    )
    assert unreadable == [] and non_images == [] and len(current) == 40

    result = check_drift(
        monitor_env.params,
        CurrentData(current),
        package=monitor_env.package_dir,
        out_dir=monitor_env.root / "same_site_run",
    )

    s = result.to_json()
    assert result.status == "no_drift" and result.drift is False, result.one_line()
    assert s["scope"] == "site hospital_a"  # compared with hospital_a's rows only
    assert s["n_reference"] >= 120 and s["n_current"] == 40
    assert s["failed_tests"] == []
    assert s["drift_share"] < s["drift_share_threshold"]
    assert s["embedding_drift"]["score"] <= s["embedding_drift"]["threshold"]
    assert "site" in s["ignored_columns"]
    assert result.one_line().startswith("NO DRIFT: ")
    assert json.loads(result.json_path.read_text()) == s


def test_prediction_drift_at_chance_level_alarms_only_above_its_threshold(monitor_env):
    """A prediction shift at K-S 0.01 < p < 0.05 is chance for a daily check (one alarm in 20
    runs of an unchanged site): stable under the default threshold, drift at 0.05."""
    from scipy.stats import ks_2samp

    current, _, _ = current_from_images(
        monitor_env.package_dir, monitor_env.same_site, site="hospital_a"
    )
    reference = load_reference(monitor_env.package_dir)
    reference_probs = reference.loc[reference["site"] == "hospital_a", "prob_abnormal"]
    shifts = np.linspace(-0.3, 0.3, 601)
    p_values = [ks_2samp(reference_probs, current["prob_abnormal"] + s).pvalue for s in shifts]
    shift = next(s for s, p in zip(shifts, p_values, strict=True) if 0.015 < p < 0.04)
    current["prob_abnormal"] = current["prob_abnormal"] + shift

    verdicts = {}
    for threshold in (None, 0.05):
        params = replace(
            monitor_env.params,
            monitor=replace(monitor_env.params.monitor, prediction_threshold=threshold),
        )
        result = check_drift(
            params,
            CurrentData(current),
            package=monitor_env.package_dir,
            out_dir=monitor_env.root / f"chance_prediction_{threshold}",
        )
        verdicts[threshold] = result.to_json()["prediction_drift"]
    assert verdicts[None]["drift"] is False and verdicts[None]["threshold"] == 0.01
    assert 0.01 < verdicts[None]["score"] < 0.05
    assert verdicts[0.05]["drift"] is True and verdicts[0.05]["threshold"] == 0.05


def test_monitor_cli_new_hospital_images_is_drift_with_evidence(monitor_env, tmp_path):
    folder = tmp_path / "incoming"
    shutil.copytree(monitor_env.new_site, folder)
    (folder / "broken.dcm").write_bytes(b"\x00" * 400)
    (folder / "notes.txt").write_text("not an image")
    (folder / "labels.csv").write_text("image,label\n")
    (folder / "scan_without_suffix").write_bytes(b"\x00" * 400)  # DICOM often has no suffix

    result = runner.invoke(
        app,
        [
            "monitor",
            "--images",
            str(folder),
            "--site",
            "new_hospital",
            "--params",
            str(monitor_env.params_file),
            "--package",
            str(monitor_env.package_dir),
            "--json",
        ],
    )

    assert result.exit_code == 3, result.output  # 3: drift detected
    s = json.loads(result.stdout)
    assert s["drift"] is True and s["status"] == "drift" and s["n_current"] == 40
    # Unreadable files are counted and listed, not skipped silently; labels tables and notes
    # are counted apart, not as unreadable images.
    source = s["source"]
    assert source["kind"] == "images" and source["n_unreadable"] == 2
    assert {Path(u["file"]).name for u in source["unreadable"]} == {
        "broken.dcm",
        "scan_without_suffix",
    }
    assert all(u["reason"].startswith("not_an_image") for u in source["unreadable"])
    assert source["n_non_image"] == 2
    assert {Path(f).name for f in source["non_image_files"]} == {"labels.csv", "notes.txt"}
    assert "unreadable: " in result.stderr
    # A new site is compared with the whole reference.
    assert s["scope"] == "all" and "not in the reference" in s["scope_reason"]
    # The evidence: embeddings beyond their calibrated threshold, and the new vendor's noisy,
    # hard-contrast, larger 16-bit images in the image statistics and acquisition columns.
    embedding = s["embedding_drift"]
    assert embedding["drift"] is True and embedding["method"] == "mmd"
    assert embedding["score"] > embedding["threshold"] > 0
    assert embedding["calibration"]["repeats"] == monitor_env.params.monitor.calibration_repeats
    assert {"img_noise", "img_std"} & set(s["image_statistics_drifted"])
    assert {"orig_rows", "bits_stored", "manufacturer"} <= set(s["drifted_columns"])
    assert s["columns"]["manufacturer"]["current_top"] == {"Contoso Imaging": 1.0}
    assert {"column drift share", "embedding drift"} <= set(s["failed_tests"])

    # Outputs: one run folder under <monitor_dir>/runs, a self-contained page, the workspace run.
    html_path = Path(s["reports"]["html"])
    assert html_path.parent.parent == monitor_env.monitor_dir / "runs"
    assert html_path.parent.name.endswith("-new_hospital")
    assert json.loads(Path(s["reports"]["json"]).read_text()) == s
    _assert_self_contained_html(html_path)
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(s["reports"]["workspace"])
    (project,) = workspace.search_project("cxr-drift-new_hospital")
    assert s["reports"]["run_id"] in [str(r) for r in workspace.list_runs(project.id)]


def test_monitor_cli_log_window_no_drift_then_insufficient_data(monitor_env, tmp_path):
    predictor = Predictor(monitor_env.package_dir)
    log_path = tmp_path / "predictions.sqlite"
    predictions = PredictionLog(log_path)
    files = sorted(monitor_env.same_site.iterdir())
    rows = [
        {
            **p.features,
            "request_id": f"req-{i}",
            "model_tag": p.model_tag,
            "threshold": p.threshold,
        }
        for i, p in enumerate(predictor.predict(files, {"site": "hospital_a"}))
    ]
    predictions.append(rows)
    predictions.close()
    base = ["monitor", "--log", str(log_path), "--params", str(monitor_env.params_file)]
    base += ["--package", str(monitor_env.package_dir)]

    result = runner.invoke(app, [*base, "--json", "--since", "2000-01-01"])

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "no_drift" and summary["n_current"] == 40
    assert summary["site"] == "hospital_a"  # inferred: every logged row says hospital_a
    assert summary["source"]["kind"] == "log"
    assert summary["current_model_tags"] == {rows[0]["model_tag"]: 40}

    result = runner.invoke(app, [*base, "--last", "5"])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("INSUFFICIENT DATA: 5 current rows < monitor.min_current_rows")
    result = runner.invoke(app, [*base, "--last", "5", "--json"])
    insufficient = json.loads(result.stdout)
    assert insufficient["status"] == "insufficient_data" and insufficient["drift"] is False
    assert set(insufficient) == set(summary)  # one schema for the flow to read


ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # git-ignored


def _wait_for_text(driver, texts: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        page = driver.find_element("tag name", "body").text
        if all(text in page for text in texts) or time.monotonic() > deadline:
            return page
        time.sleep(0.5)


@pytest.mark.slow
def test_evidently_ui_tells_the_story_of_three_checks(monitor_env, evidently_ui, browser):
    """Issue 10: the project dashboard has panels over time; reports are tagged and named."""
    from cxr_triage.monitoring import ImageFolder
    from cxr_triage.monitoring.dashboard import panel_titles

    out = monitor_env.root / "story"
    second = synth_images(monitor_env.root, "batch_a2", 40, "hospital_a", 106)
    batches = [monitor_env.same_site, second, monitor_env.new_site]  # the last: a new scanner
    runs = [
        check_drift(
            monitor_env.params,
            ImageFolder(folder),
            package=monitor_env.package_dir,
            site="hospital_a",
            out_dir=out,
        )
        for folder in batches
    ]
    assert [r.status for r in runs] == ["no_drift", "no_drift", "drift"]
    reports = runs[-1].reports
    base = evidently_ui(reports.workspace)

    snapshots = get_json(f"{base}/api/projects/{reports.project_id}/snapshots")
    assert len(snapshots) == 3
    last = next(s for s in snapshots if s["id"] == reports.run_id)
    assert {"site:hospital_a", "verdict:drift", f"model:{runs[-1].model_tag}"} <= set(last["tags"])
    assert last["metadata"]["verdict"] == "drift" and "images in" in last["metadata"]["window"]
    data = json.dumps(get_json(f"{base}/api/projects/{reports.project_id}/{reports.run_id}/data"))
    assert "Drift in embeddings" in data and "embedding drift" in data

    ARTIFACTS.mkdir(exist_ok=True)
    browser.get(f"{base}/projects/{reports.project_id}")
    titles = panel_titles("hospital_a", monitor_env.params.monitor)
    page = _wait_for_text(browser, titles)
    browser.save_screenshot(str(ARTIFACTS / "evidently-dashboard.png"))
    assert all(title in page for title in titles), page
    assert "This dashboard is currently empty" not in page

    browser.get(f"{base}/projects/{reports.project_id}/reports/{reports.run_id}")
    page = _wait_for_text(browser, ["Drifted columns", "Prediction (prob_abnormal) distribution"])
    browser.save_screenshot(str(ARTIFACTS / "evidently-report.png"))
    assert "Drifted columns" in page and "Count of Drifted Columns" not in page
    drifted = runs[-1].verdict
    assert f"{len(drifted.drifted_columns)} of {drifted.n_columns}" in page  # an integer count
