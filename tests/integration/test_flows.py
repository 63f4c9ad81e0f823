"""The Prefect flows against a real `prefect server start` and a real local webhook receiver.

One server per module (its event services evaluate the automations); the receiver is an
http.server in a thread that records every alert POSTed to it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxr_triage.config import PromoteParams
from cxr_triage.data.synth import generate_dataset
from cxr_triage.errors import LeakageError
from cxr_triage.inference import registry
from helpers.commands import run_command, runner
from helpers.pipeline import REPO
from helpers.webhook import EVIDENTLY_UI, PREFECT_UI

pytestmark = pytest.mark.integration

if str(REPO) not in sys.path:  # `flows/` is a top-level folder of the repository, not installed
    sys.path.insert(0, str(REPO))
SALT = "integration-test-salt-0123456789"


def test_alert_setup_is_idempotent(alert_receiver):
    from prefect.client.orchestration import get_client

    from cxr_triage.orchestration.events import ALERTS

    with get_client(sync_client=True) as client:
        for spec in ALERTS:
            assert len(client.read_automations_by_name(spec["name"])) == 1


def test_failing_flow_run_alerts_once_with_the_first_line_and_the_run_link(alert_receiver):
    from prefect import flow
    from prefect.events import emit_event

    from cxr_triage.orchestration.events import drift_event
    from helpers.summaries import drift_summary

    @flow(name="cxr-test-always-fails")
    def always_fails() -> None:
        raise RuntimeError("stage exploded on purpose\nTraceback details nobody reads")

    state = always_fails(return_state=True)
    assert state.is_failed()
    message = alert_receiver.wait_for("cxr-test-always-fails")
    assert "flow run failed" in message["title"]
    first_line, link = message["text"].split("\n")
    assert "stage exploded on purpose" in first_line
    assert link == f"Prefect run: {PREFECT_UI}/runs/flow-run/{state.state_details.flow_run_id}"

    assert always_fails(return_state=True).is_failed()  # the same failure again: folded
    emit_event(**drift_event(drift_summary(site="after_failures")))  # then something else
    alert_receiver.wait_for("after_failures")
    assert alert_receiver.count("cxr-test-always-fails") == 1


def test_repeated_drift_alert_within_the_cooldown_is_folded(alert_receiver):
    from prefect.events import emit_event

    from cxr_triage.orchestration.events import drift_event
    from helpers.summaries import drift_summary

    for _ in range(2):  # the same alert twice (same site, verdict and model)
        emit_event(**drift_event(drift_summary(site="cool_site")))
    emit_event(**drift_event(drift_summary(site="cool_other")))

    alert_receiver.wait_for("cool_other")
    assert alert_receiver.count("cool_site") == 1
    message = alert_receiver.wait_for("cool_site")
    assert message["title"].startswith("[cxr-triage] drift detected at cool_site, model ")
    assert "share 0.905, limit 0.3" in message["text"]
    project, run = drift_summary()["reports"]["project_id"], drift_summary()["reports"]["run_id"]
    assert f"Evidently report: {EVIDENTLY_UI}/projects/{project}/reports/{run}" in message["text"]


# -- training --------------------------------------------------------------------------------


def test_training_flow_runs_stages_in_dvc_graph_order(prefect_server, pipeline_repo):
    from flows.training import training_flow
    from prefect.client.orchestration import get_client

    from cxr_triage.orchestration.pipeline import stage_order

    result = training_flow(repo_dir=str(pipeline_repo), until="split")
    assert [s["stage"] for s in result["stages"]] == stage_order(pipeline_repo, until="split")
    assert [s["stage"] for s in result["stages"]] == ["synth", "ingest", "split"]
    assert all(s["ran"] for s in result["stages"])
    lock = yaml.safe_load((pipeline_repo / "dvc.lock").read_text())
    assert {"synth", "ingest", "split"} <= set(lock["stages"])

    again = training_flow(repo_dir=str(pipeline_repo), until="split")
    assert not any(s["ran"] for s in again["stages"])  # DVC skipped the unchanged stages
    with get_client(sync_client=True) as client:
        names = {t.name for t in client.read_task_runs()}
    assert {"synth", "ingest", "split"} <= names  # one task run per stage, named after it


@pytest.mark.slow
def test_training_flow_runs_the_whole_pipeline_and_publishes(prefect_server, pipeline_repo):
    from flows.training import training_flow
    from prefect.client.orchestration import get_client

    result = training_flow(repo_dir=str(pipeline_repo))
    assert [s["stage"] for s in result["stages"]][-1] == "package"
    outputs = result["outputs"]
    assert outputs["package"]["model_tag"].startswith("cxr-triage:")
    assert "test_auroc" in outputs["test_metrics"] and "threshold" in outputs["threshold"]
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"cxr-comparison-table", "cxr-threshold", "cxr-test-metrics", "cxr-package"} <= keys


# -- ingestion -------------------------------------------------------------------------------


def test_ingestion_flow_versions_accepted_images_and_lists_rejects(
    prefect_server, tmp_path, monkeypatch
):
    from flows.ingestion import ingestion_flow

    from cxr_triage.data.ingest import ingest_source

    monkeypatch.setenv("CXR_TRIAGE_SALT", SALT)
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    run_command(["git", "init", "-q"], repo)
    run_command(["dvc", "init", "-q"], repo)
    run_command(["git", "add", "-A"], repo)
    run_command(["git", "commit", "-qm", "init"], repo)
    incoming = repo / "data" / "incoming"
    generate_dataset(incoming, n=6, site="hospital_b", seed=3)
    (incoming / "images" / "broken.dcm").write_bytes(b"not a dicom at all")
    (incoming / "images" / "unlisted.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    labels = pd.read_csv(incoming / "labels.csv")
    extra = labels.iloc[[0]].assign(**{"Image Index": "broken.dcm"})
    pd.concat([labels, extra]).to_csv(incoming / "labels.csv", index=False)

    result = ingestion_flow(incoming_dir="data/incoming", repo_dir=str(repo), commit=True)
    assert len(result["accepted"]) == 6
    reasons = {r["source_path"]: r["reason"] for r in result["rejected"]}
    assert reasons == {"images/broken.dcm": "not_an_image", "images/unlisted.png": "no_label_row"}
    assert (repo / "data" / "raw.dvc").is_file() and result["data_version"]
    assert "data: add batch" in run_command(["git", "log", "--oneline"], repo)
    assert not any(incoming.iterdir())  # the batch moved to processed/ after success
    processed = Path(result["processed_to"])
    assert (processed / "images" / "broken.dcm").is_file()
    assert json.loads((processed / "ingestion_report.json").read_text())["rejected"]

    raw_labels = pd.read_csv(repo / "data" / "raw" / "labels.csv", dtype=str)
    assert not raw_labels["patient_id"].str.contains("SYN-").any()  # pseudonymised
    assert all(p.suffix == ".png" for p in (repo / "data" / "raw" / "images").iterdir())
    # The raw folder is a `folder` source: the ingest stage trains on it as it is.
    summary = ingest_source(
        "folder", repo / "data" / "raw", tmp_path / "ingested", image_size=32, workers=1
    )
    assert summary.n_ingested == 6 and summary.n_rejected == 0

    # The same images again: all refused as duplicates, the data version is unchanged.
    generate_dataset(incoming, n=6, site="hospital_b", seed=3, overwrite=True)
    again = ingestion_flow(incoming_dir="data/incoming", repo_dir=str(repo))
    assert not again["accepted"] and {r["reason"] for r in again["rejected"]} == {"duplicate"}


# -- promotion gate --------------------------------------------------------------------------


def _with_gate(pipeline, frozen: Path, margin: float) -> Path:
    """Write the pipeline's params.yaml (with the gate's rule) into its root; return the root."""
    data = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(pipeline.params)))
    data["promote"].update(
        frozen_test_dir=str(frozen),
        max_auroc_drop=margin,
        min_sensitivity=0.5,
        n_boot=300,
    )
    (pipeline.root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return pipeline.root


def test_frozen_set_sharing_training_patients_is_refused(tiny_pipeline, tmp_path):
    from cxr_triage.data.deid import salt_from_env
    from cxr_triage.orchestration.gate import check_frozen_set_disjoint, load_frozen_set

    site = next(Path(tiny_pipeline.params.paths.synth_dir).iterdir())
    copied = tmp_path / "frozen" / site.name
    shutil.copytree(site, copied)
    frozen = load_frozen_set(copied.parent, "synthetic", {32}, salt=salt_from_env(synthetic=True))
    params = dataclasses.replace(
        tiny_pipeline.params, promote=PromoteParams(frozen_test_dir=str(copied.parent))
    )
    with pytest.raises(LeakageError, match="also appear in the training data"):
        check_frozen_set_disjoint(frozen.patient_id, params)
    inside = dataclasses.replace(
        tiny_pipeline.params,
        promote=PromoteParams(frozen_test_dir=tiny_pipeline.params.paths.synth_dir),
    )
    with pytest.raises(LeakageError, match="overlaps the training source"):
        check_frozen_set_disjoint([], inside)


def test_gate_promotes_better_and_refuses_worse_with_notifications(
    alert_receiver, tiny_pipeline, worse_pipeline, frozen_set
):
    from flows.retraining import promotion_flow

    # The tiny models are close to chance (32 px, 2 epochs: their AUROCs differ by ~0.05 with a
    # CI of +-0.15 on 120 frozen images), so the margin is set per candidate: loose for the
    # trained one, zero (must be demonstrably no worse) for the inverted-label one. The rule's
    # better/worse discrimination on clearly different scores is in the unit tests.
    good_root = _with_gate(tiny_pipeline, frozen_set, margin=0.3)
    bad_root = _with_gate(worse_pipeline, frozen_set, margin=0.0)
    bad_tag = registry.register_package(worse_pipeline.package_dir)
    registry.promote(bad_tag, reason="test: the worse model serves first")

    better = promotion_flow(repo_dir=str(good_root))
    assert better["status"] == "promoted", better["reason"]
    good_tag = better["candidate_tag"]
    assert registry.serving_tag() == good_tag != bad_tag
    record = registry.serving_record()
    assert record["evidence"]["evidence"]["auroc_difference"]["low"] >= -0.3
    assert record["history"][-1]["tag"] == bad_tag
    alert_receiver.wait_for(f"PROMOTED {good_tag}")

    worse = promotion_flow(repo_dir=str(bad_root))
    assert worse["status"] == "rejected"
    assert "auroc_non_inferiority" in worse["reason"]
    assert registry.serving_tag() == good_tag  # the serving record did not change
    message = alert_receiver.wait_for(f"REJECTED {bad_tag}")
    assert "retraining: rejected" in message["title"]
    promotion = json.loads((Path(worse_pipeline.params.paths.package_report_dir) /
                            "promotion.json").read_text())  # fmt: skip
    assert promotion["status"] == "rejected" and promotion["evidence"]["n_images"] >= 100


# -- monitoring ------------------------------------------------------------------------------


def test_monitoring_alerts_on_a_shifted_site_only(
    alert_receiver, tiny_pipeline, monitored_package, tmp_path
):
    from flows.monitoring import monitoring_flow

    params = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(tiny_pipeline.params)))
    params["monitor"]["retrain_on_drift"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    same, shifted = tmp_path / "same_site", tmp_path / "new_hospital"
    generate_dataset(same, n=40, site="hospital_a", seed=102)
    generate_dataset(shifted, n=40, site="new_hospital", seed=103)
    common = {"repo_dir": str(tmp_path), "package_dir": str(monitored_package)}

    quiet = monitoring_flow(folder=str(same / "images"), site="hospital_a", **common)
    assert quiet["summary"]["status"] == "no_drift", quiet["one_line"]
    assert not quiet["drift"] and quiet["event"] is None and quiet["retraining_run"] is None

    loud = monitoring_flow(
        folder=str(shifted / "images"),
        site="new_hospital",
        retraining_deployment="cxr-retraining/does-not-exist",
        **common,
    )
    assert loud["drift"] and loud["event"], loud["one_line"]
    assert loud["retraining_run"] is None  # the deployment is missing: logged, not crashed
    message = alert_receiver.wait_for("drift detected at new_hospital")
    summary = loud["summary"]
    assert message["title"] == (
        f"[cxr-triage] drift detected at new_hospital, model {summary['model_tag']}"
    )
    reports = summary["reports"]
    report_link = f"{EVIDENTLY_UI}/projects/{reports['project_id']}/reports/{reports['run_id']}"
    lines = message["text"].splitlines()
    assert lines[0].startswith("Evidence: ") and f"Evidently report: {report_link}" in lines
    assert any(line.startswith(f"Prefect run: {PREFECT_UI}/runs/flow-run/") for line in lines)
    assert "report.html" not in message["text"]  # a link, not a path on the server
    time.sleep(2)
    assert alert_receiver.count("drift detected at hospital_a") == 0


def test_cli_and_flow_check_the_same_package_and_keep_the_whole_summary(
    prefect_server, tiny_pipeline, monitored_package, tmp_path, monkeypatch
):
    """Bug (issue 9): `cxr-triage monitor` defaulted to `paths.package_dir`, the flow to the
    serving model; the flow dropped the unreadable files from its summary and patched keys in."""
    from flows.monitoring import monitoring_flow

    from cxr_triage.cli import app
    from cxr_triage.state import STATE_DIR_ENV

    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))  # its own serving record
    serving = registry.register_package(tiny_pipeline.package_dir)
    registry.promote(serving, reason="test: the serving model")
    params = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(tiny_pipeline.params)))
    params["paths"]["package_dir"] = str(monitored_package)  # a workspace package, not serving
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    generate_dataset(tmp_path / "incoming", n=8, site="hospital_a", seed=104)
    images = tmp_path / "incoming" / "images"
    (images / "broken.dcm").write_bytes(b"\x00" * 400)

    cli = runner.invoke(
        app,
        ["monitor", "--images", str(images), "--site", "hospital_a", "--json",
         "--params", str(tmp_path / "params.yaml")],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    by_cli = json.loads(cli.stdout)
    by_flow = monitoring_flow(repo_dir=str(tmp_path), folder=str(images), site="hospital_a")[
        "summary"
    ]

    serving_dir = str(registry.stored_package_dir(serving))
    assert by_cli["package_dir"] == by_flow["package_dir"] == serving_dir
    assert by_cli["model_tag"] == by_flow["model_tag"] == serving
    unreadable = by_flow["source"]["unreadable"]
    assert [Path(u["file"]).name for u in unreadable] == ["broken.dcm"]
    assert unreadable == by_cli["source"]["unreadable"]
    # The flow returns the summary exactly as written, nothing patched in after the fact.
    assert json.loads(Path(by_flow["reports"]["json"]).read_text()) == by_flow


def test_first_day_and_empty_window_end_completed_without_alert(
    alert_receiver, tiny_pipeline, monitored_package, tmp_path, monkeypatch
):
    """Issue 10: before the service has logged a prediction the daily run ended Failed."""
    from flows.monitoring import monitoring_flow

    from cxr_triage.inference.predlog import PredictionLog
    from cxr_triage.state import STATE_DIR_ENV, state_layout

    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))  # a fresh install: no log
    params = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(tiny_pipeline.params)))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    common = {"repo_dir": str(tmp_path), "package_dir": str(monitored_package), "site": "day_one"}

    state = monitoring_flow(**common, return_state=True)

    assert state.is_completed(), state.message
    first_day = state.result()
    assert first_day["status"] == "insufficient_data" and first_day["event"] is None
    summary = first_day["summary"]
    assert summary["source"]["log_exists"] is False and "no prediction log" in summary["reason"]
    assert not state_layout().prediction_log.exists()  # monitoring never creates the log

    PredictionLog(state_layout().prediction_log).close()  # the service started, no prediction
    empty = monitoring_flow(**common, window_hours=1.0, last=100)
    assert empty["status"] == "insufficient_data" and empty["summary"]["n_current"] == 0
    assert empty["summary"]["source"]["last"] == 100 and empty["summary"]["source"]["since"]
    time.sleep(2)
    assert alert_receiver.count("day_one") == 0  # neither a drift alert nor a failure alert


def test_fed_back_reads_with_missed_abnormals_alert_the_maintainers(
    alert_receiver, tiny_pipeline, monitored_package, tmp_path, monkeypatch
):
    """Issue 10: ground truth closes the loop (feedback -> realised sensitivity -> alert)."""
    from flows.monitoring import monitoring_flow

    from cxr_triage.cli import app
    from cxr_triage.inference.predictor import Predictor
    from cxr_triage.inference.predlog import PredictionLog
    from cxr_triage.state import STATE_DIR_ENV, state_layout

    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    params = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(tiny_pipeline.params)))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    generate_dataset(tmp_path / "served", n=40, site="hospital_a", seed=105)
    images = sorted((tmp_path / "served" / "images").iterdir())
    rows = []  # what the service logged; every other study called abnormal
    for i, p in enumerate(Predictor(monitored_package).predict(images, {"site": "hospital_a"})):
        called = i % 2 == 0
        prob = (1 + p.threshold) / 2 if called else p.threshold / 2
        rows.append({**p.features, "prob_abnormal": prob, "label": "abnormal" if called else
                     "normal", "request_id": f"req-{i}", "model_tag": p.model_tag,
                     "threshold": p.threshold})  # fmt: skip
    log = PredictionLog(state_layout().prediction_log)
    log.append(rows)
    log.close()
    # The radiologists: 20 abnormal studies, 12 of them among those the model called normal.
    called_normal = [r["request_id"] for r in rows if r["label"] == "normal"]
    called_abnormal = [r["request_id"] for r in rows if r["label"] == "abnormal"]
    abnormal = called_normal[:12] + called_abnormal[:8]
    reads = pd.DataFrame(
        {"request_id": [r["request_id"] for r in rows],
         "label": ["abnormal" if r["request_id"] in abnormal else "normal" for r in rows]}
    )  # fmt: skip
    reads.to_csv(tmp_path / "reads.csv", index=False)
    stored = runner.invoke(app, ["feedback", str(tmp_path / "reads.csv")])
    assert stored.exit_code == 0 and "40 match a logged prediction" in stored.stdout

    report = monitoring_flow(repo_dir=str(tmp_path), package_dir=str(monitored_package))

    performance = report["summary"]["performance"]
    assert performance["status"] == "below_target" and report["performance_event"]
    assert performance["sensitivity"]["estimate"] == pytest.approx(8 / 20)
    assert performance["specificity"]["estimate"] == pytest.approx(8 / 20)
    message = alert_receiver.wait_for("sensitivity below target at hospital_a")
    assert message["title"].endswith(f"model {rows[0]['model_tag']}")
    assert "realised sensitivity 0.4 (95% CI " in message["text"]
    assert f"Prefect run: {PREFECT_UI}/runs/flow-run/" in message["text"]


# -- deployments -----------------------------------------------------------------------------


def test_deploy_registers_schedules_from_params(prefect_server):
    from flows.deploy import deploy_all, deployment_specs
    from prefect.client.orchestration import get_client

    from cxr_triage.config import load_params

    params = load_params(REPO / "params.yaml")
    deploy_all(REPO)
    deploy_all(REPO)  # re-running updates in place
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(params.schedule.work_pool)
        assert pool.type == "process"
        for spec in deployment_specs(params, REPO):
            deployment = client.read_deployment_by_name(spec.full_name)
            (schedule,) = deployment.schedules
            assert schedule.schedule.cron == spec.cron
            assert schedule.schedule.timezone == params.schedule.timezone
            assert deployment.work_pool_name == params.schedule.work_pool
            assert deployment.parameters == {"repo_dir": str(REPO)}
    crons = {s.name: s.cron for s in deployment_specs(params, REPO)}
    assert crons == {
        "daily": params.schedule.monitoring_cron,
        "weekly": params.schedule.retraining_cron,
    }


def test_deploy_takes_the_monitoring_window_of_the_cli(prefect_server):
    from flows.deploy import deploy_all, deployment_specs
    from prefect.client.orchestration import get_client

    from cxr_triage.config import load_params

    params = load_params(REPO / "params.yaml")
    window = {"hours": 12.0, "since": None, "until": None, "last": 500}
    daily, weekly = deployment_specs(params, REPO, window)
    assert daily.parameters == {"repo_dir": str(REPO), "window_hours": 12.0, "last": 500}
    assert weekly.parameters == {"repo_dir": str(REPO)}
    try:
        deploy_all(REPO, window)
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(daily.full_name)
        assert deployment.parameters == daily.parameters
    finally:
        deploy_all(REPO)  # as the other tests expect it
