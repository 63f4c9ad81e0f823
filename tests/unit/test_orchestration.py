"""Orchestration library: DVC stage order, stage failures, the promotion gate's rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxr_triage.config import Params, PromoteParams, ScheduleParams, parse_section
from cxr_triage.errors import ConfigError, DataError
from cxr_triage.orchestration.events import ALERTS, DRIFT_EVENT, retraining_event
from cxr_triage.orchestration.gate import decide_on_scores
from cxr_triage.orchestration.pipeline import (
    StageFailedError,
    is_transient_failure,
    run_stage,
    stage_order,
)

REPO = Path(__file__).resolve().parents[2]


def _dvc_repo(root: Path, stages: dict) -> Path:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True, env=env)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root


def _touch(name: str) -> str:
    return f"python -c \"open('{name}', 'w').write('x')\""


@pytest.fixture(scope="module")
def shuffled_repo(tmp_path_factory) -> Path:
    """dvc.yaml listing stages out of dependency order: c needs b needs a; d is independent."""
    stages = {
        "c": {"cmd": _touch("c.txt"), "deps": ["b.txt"], "outs": ["c.txt"]},
        "d": {"cmd": _touch("d.txt"), "outs": ["d.txt"]},
        "b": {"cmd": _touch("b.txt"), "deps": ["a.txt"], "outs": ["b.txt"]},
        "a": {"cmd": _touch("a.txt"), "outs": ["a.txt"]},
        "killed": {"cmd": 'python -c "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"'},
        "bad_data": {"cmd": "python -c \"import sys; print('no label column'); sys.exit(3)\""},
    }
    return _dvc_repo(tmp_path_factory.mktemp("dvc_order"), stages)


def test_stage_order_follows_dvc_graph_not_file_order(shuffled_repo):
    order = stage_order(shuffled_repo)
    assert order.index("a") < order.index("b") < order.index("c")
    assert set(order) == {"a", "b", "c", "d", "killed", "bad_data"}
    # independent stages keep their dvc.yaml position relative to each other
    assert order.index("d") < order.index("killed") < order.index("bad_data")


def test_stage_order_until_keeps_only_dependencies(shuffled_repo):
    assert stage_order(shuffled_repo, until="c") == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        stage_order(shuffled_repo, until="nope")


def test_stage_order_of_this_repository_starts_with_data_and_ends_with_package():
    order = stage_order(REPO)
    assert order[:3] == ["synth", "ingest", "split"]
    assert order[-1] == "package"
    assert order.index("backbone") < order.index("embed") < order.index("transfer")
    assert order.index("compare") < order.index("threshold") < order.index("evaluate")


def test_run_stage_streams_output_and_skips_unchanged(shuffled_repo):
    lines: list[str] = []
    first = run_stage(shuffled_repo, "a", on_line=lines.append)
    assert first.ran and any("Running stage 'a'" in line for line in lines)
    assert not run_stage(shuffled_repo, "a").ran  # unchanged: DVC skips it
    assert "a:" in (shuffled_repo / "dvc.lock").read_text()


def test_run_stage_classifies_killed_as_transient_and_data_error_as_not(shuffled_repo):
    with pytest.raises(StageFailedError) as killed:
        run_stage(shuffled_repo, "killed")
    assert killed.value.transient
    with pytest.raises(StageFailedError) as bad:
        run_stage(shuffled_repo, "bad_data")
    assert not bad.value.transient
    assert "no label column" in str(bad.value) and "dvc repro bad_data" in str(bad.value)


@pytest.mark.parametrize(
    ("returncode", "output", "transient"),
    [
        (-9, "", True),
        (137, "", True),
        (255, "ERROR: sqlite3.OperationalError: database is locked", True),
        (255, "ERROR: Unable to acquire lock. Most likely another DVC process is running", True),
        (255, "ERROR: failed to reproduce 'x': failed to run: python y, exited with -9", True),
        (255, "ERROR: failed to reproduce 'x': failed to run: python y, exited with 1", False),
        (1, "DataError: labels.csv: no image column", False),
    ],
)
def test_is_transient_failure(returncode, output, transient):
    assert is_transient_failure(returncode, output) is transient


# -- the gate's rule -------------------------------------------------------------------------


def _frozen_scores(n_patients: int = 150, seed: int = 0):
    """Two images per patient; a good and a noisy scorer of the same labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_patients).repeat(2)
    groups = np.arange(n_patients).repeat(2)
    good = np.clip(0.5 + (y - 0.5) * 0.5 + rng.normal(0, 0.2, y.size), 0, 1)
    noise = rng.uniform(0, 1, y.size)
    return y, groups, good, noise


RULE = PromoteParams(max_auroc_drop=0.02, min_sensitivity=0.8, n_boot=300)


def test_gate_rejects_a_worse_candidate_by_the_ci():
    y, groups, good, noise = _frozen_scores()
    decision = decide_on_scores(y, good, noise, groups, candidate_threshold=0.1, rule=RULE, seed=0)
    assert decision.status == "rejected" and not decision.promoted
    check = {c.name: c for c in decision.checks}["auroc_non_inferiority"]
    assert not check.passed and check.value < -0.02
    assert "auroc_non_inferiority" in decision.reason
    assert decision.evidence["serving_auroc"] > decision.evidence["candidate_auroc"]


def test_gate_promotes_a_better_candidate():
    y, groups, good, noise = _frozen_scores()
    decision = decide_on_scores(y, noise, good, groups, candidate_threshold=0.3, rule=RULE, seed=0)
    assert decision.promoted, decision.reason
    diff = decision.evidence["auroc_difference"]
    assert diff["low"] > 0 and diff["n_boot"] == 300


def test_gate_accepts_an_equal_candidate_within_the_margin_only_with_a_wide_margin():
    y, groups, good, _ = _frozen_scores()
    rng = np.random.default_rng(1)
    similar = np.clip(good + rng.normal(0, 0.02, good.size), 0, 1)
    strict = PromoteParams(max_auroc_drop=0.0, min_sensitivity=0.0, n_boot=300)
    loose = PromoteParams(max_auroc_drop=0.05, min_sensitivity=0.0, n_boot=300)
    kwargs = {"candidate_threshold": 0.5, "seed": 0}
    assert not decide_on_scores(y, good, similar, groups, rule=strict, **kwargs).promoted
    assert decide_on_scores(y, good, similar, groups, rule=loose, **kwargs).promoted


def test_gate_rejects_a_threshold_that_misses_the_sensitivity_floor():
    y, groups, good, noise = _frozen_scores()
    decision = decide_on_scores(
        y, noise, good, groups, candidate_threshold=0.95, rule=RULE, seed=0
    )
    assert not decision.promoted
    failed = [c.name for c in decision.checks if not c.passed]
    assert failed == ["sensitivity_at_threshold"]
    assert "sensitivity" in decision.reason and "0.95" in decision.reason


def test_gate_refuses_a_one_class_frozen_set():
    y = np.zeros(20)
    with pytest.raises(DataError, match="both classes"):
        decide_on_scores(y, y, y, np.arange(20), candidate_threshold=0.5, rule=RULE, seed=0)


# -- params, events --------------------------------------------------------------------------


def test_params_yaml_has_promote_and_schedule_sections():
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    params = parse_section(Params, data, "")
    assert params.schedule.monitoring_cron == data["schedule"]["monitoring_cron"]
    assert params.promote.frozen_test_seed != params.seed


@pytest.mark.parametrize(
    ("section", "values", "match"),
    [
        (ScheduleParams, {"monitoring_cron": "0 6 * *"}, "5-field cron"),
        (ScheduleParams, {"timezone": "Mars/Olympus"}, "unknown time zone"),
        (PromoteParams, {"min_sensitivity": 1.5}, "min_sensitivity"),
        (PromoteParams, {"max_auroc_drop": -0.1}, "max_auroc_drop"),
    ],
)
def test_schedule_and_promote_params_are_validated(section, values, match):
    with pytest.raises(ConfigError, match=match):
        parse_section(section, values, "x")


def test_retraining_event_and_alerts_cover_every_result():
    decision = {"status": "rejected", "promoted": False, "evidence": {"serving_auroc": 0.8}}
    event = retraining_event(decision, "REJECTED x")
    assert event["payload"]["status"] == "rejected" and event["payload"]["serving_auroc"] == 0.8
    names = {a["event"] for a in ALERTS}
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", DRIFT_EVENT} < names
    assert len({a["name"] for a in ALERTS}) == len(ALERTS)
