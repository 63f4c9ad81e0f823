"""Tests of cxr_triage.evaluation.threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.metrics import binary_metrics_at_threshold
from cxr_triage.evaluation.threshold import auto_clear_share, select_threshold

Data = tuple[np.ndarray, np.ndarray, np.ndarray]


def _sensitivity(y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> float:
    return binary_metrics_at_threshold(y_true, y_score, threshold)["sensitivity"]


def test_target_sensitivity_is_the_highest_threshold_reaching_it(val: Data) -> None:
    y_true, y_score, _ = val
    point = select_threshold(y_true, y_score, "target_sensitivity", target_sensitivity=0.9)
    assert point.sensitivity >= 0.9
    # Any higher threshold (the next score up) drops below the target.
    higher = np.min(y_score[y_score > point.threshold])
    assert _sensitivity(y_true, y_score, higher) < 0.9
    assert point.threshold in set(y_score[y_true == 1])


def test_target_sensitivity_with_ci_is_more_conservative(val: Data) -> None:
    y_true, y_score, groups = val
    plain = select_threshold(
        y_true, y_score, "target_sensitivity", target_sensitivity=0.9, groups=groups, n_boot=300
    )
    strict = select_threshold(
        y_true,
        y_score,
        "target_sensitivity",
        target_sensitivity=0.9,
        require_ci=True,
        groups=groups,
        n_boot=300,
    )
    assert plain.sensitivity_ci_low is not None and plain.sensitivity_ci_low < 0.9
    assert strict.sensitivity_ci_low >= 0.9
    assert strict.threshold < plain.threshold
    assert strict.sensitivity > plain.sensitivity
    assert strict.sensitivity_ci_low <= strict.sensitivity <= strict.sensitivity_ci_high


def test_require_ci_needs_groups(val: Data) -> None:
    y_true, y_score, _ = val
    with pytest.raises(ConfigError, match="groups"):
        select_threshold(y_true, y_score, "target_sensitivity", require_ci=True)


def test_target_specificity_is_the_lowest_threshold_reaching_it(val: Data) -> None:
    y_true, y_score, _ = val
    point = select_threshold(y_true, y_score, "target_specificity", target_specificity=0.85)
    assert point.specificity >= 0.85
    lower = np.max(y_score[y_score < point.threshold])
    assert binary_metrics_at_threshold(y_true, y_score, lower)["specificity"] < 0.85


def test_youden_maximises_j(val: Data) -> None:
    y_true, y_score, _ = val
    point = select_threshold(y_true, y_score, "youden")
    best_j = point.sensitivity + point.specificity - 1
    for threshold in np.unique(y_score):
        metrics = binary_metrics_at_threshold(y_true, y_score, threshold)
        assert metrics["sensitivity"] + metrics["specificity"] - 1 <= best_j + 1e-12


def test_min_cost_moves_threshold_with_the_cost_ratio(val: Data) -> None:
    y_true, y_score, _ = val
    cautious = select_threshold(y_true, y_score, "min_cost", cost_fn=20.0, cost_fp=1.0)
    relaxed = select_threshold(y_true, y_score, "min_cost", cost_fn=1.0, cost_fp=20.0)
    assert cautious.threshold < relaxed.threshold
    assert cautious.sensitivity > relaxed.sensitivity
    expected = (20.0 * cautious.fn + 1.0 * cautious.fp) / cautious.n
    assert cautious.expected_cost == pytest.approx(expected)


def test_perfect_separation_gives_full_sensitivity_and_specificity() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 1])
    y_score = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    point = select_threshold(y_true, y_score, "target_sensitivity", target_sensitivity=1.0)
    assert point.threshold == 0.7
    assert (point.sensitivity, point.specificity) == (1.0, 1.0)


def test_operating_point_to_dict_is_json_safe(val: Data) -> None:
    y_true, y_score, _ = val
    point = select_threshold(y_true, y_score, "target_specificity", target_specificity=1.0)
    data = json.loads(json.dumps(point.to_dict(), allow_nan=False))
    assert data["policy"] == "target_specificity"
    assert data["threshold"] == point.threshold


def test_bad_arguments_raise_config_error(val: Data) -> None:
    y_true, y_score, _ = val
    with pytest.raises(ConfigError, match="'youden'"):
        select_threshold(y_true, y_score, "f1")
    with pytest.raises(ConfigError, match="target_sensitivity"):
        select_threshold(y_true, y_score, "target_sensitivity", target_sensitivity=1.5)
    with pytest.raises(ConfigError, match="both normal and abnormal"):
        select_threshold(np.ones(4), np.linspace(0, 1, 4))
    with pytest.raises(ConfigError, match="positive"):
        select_threshold(y_true, y_score, "min_cost", cost_fn=0.0)


def test_auto_clear_share_counts_studies_below_threshold() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 1])
    y_score = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    shares = auto_clear_share(y_true, y_score, threshold=0.5)
    assert shares["normal_cleared_share"] == pytest.approx(3 / 4)
    assert shares["worklist_cleared_share"] == pytest.approx(3 / 6)
    assert shares["abnormal_cleared_share"] == 0.0
