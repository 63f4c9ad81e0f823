"""Orchestration library: DVC stage order, stage failures, the promotion gate's rule."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from cxr_triage.config import Params, PromoteParams, ScheduleParams, parse_section
from cxr_triage.errors import ConfigError, DataError
from cxr_triage.orchestration.events import ALERTS, DRIFT_EVENT, retraining_event
from cxr_triage.orchestration.gate import decide_on_scores
from cxr_triage.orchestration.pipeline import (
    is_transient_failure,
)
from helpers.pipeline import REPO


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
