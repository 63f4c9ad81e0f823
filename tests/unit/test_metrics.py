"""Tests of cxr_triage.evaluation.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as sklearn_log_loss

from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.metrics import (
    auprc,
    auroc,
    binary_metrics_at_threshold,
    bootstrap_ci,
    brier,
    expected_calibration_error,
    log_loss,
    reliability_curve,
    summarise_scores,
)


def test_auroc_perfect_ranking_is_one_and_reversed_is_zero() -> None:
    y_true = np.array([0, 0, 0, 1, 1])
    y_score = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert auroc(y_true, y_score) == 1.0
    assert auroc(y_true, 1.0 - y_score) == 0.0
    assert auroc(y_true, np.full(5, 0.5)) == 0.5


def test_metrics_match_sklearn_with_ties(scored: tuple[np.ndarray, ...]) -> None:
    y_true, y_score, _ = scored
    assert auroc(y_true, y_score) == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-12)
    assert auprc(y_true, y_score) == pytest.approx(
        average_precision_score(y_true, y_score), abs=1e-12
    )
    assert brier(y_true, y_score) == pytest.approx(brier_score_loss(y_true, y_score))
    clipped = np.clip(y_score, 1e-7, 1 - 1e-7)
    assert log_loss(y_true, y_score) == pytest.approx(sklearn_log_loss(y_true, clipped))


def test_auroc_single_class_is_nan() -> None:
    assert math.isnan(auroc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(auprc([0, 0], [0.2, 0.5]))


def test_log_loss_is_finite_for_confidently_wrong_scores() -> None:
    value = log_loss([1, 0], [0.0, 1.0])
    assert math.isfinite(value)
    assert value == pytest.approx(-math.log(1e-7))


def test_expected_calibration_error_of_calibrated_bins_is_zero() -> None:
    # Each bin's scores all equal the bin's fraction of positives: perfectly calibrated.
    y_score = np.repeat([0.1, 0.3, 0.5, 0.7, 0.9], 10)
    y_true = np.concatenate([np.r_[np.ones(k), np.zeros(10 - k)] for k in (1, 3, 5, 7, 9)])
    assert expected_calibration_error(y_true, y_score, n_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_expected_calibration_error_of_overconfident_scores() -> None:
    # Scores of 0.9 where only half are positive: gap 0.4 in the one occupied bin.
    y_true = np.array([1, 0] * 50)
    assert expected_calibration_error(y_true, np.full(100, 0.9)) == pytest.approx(0.4)


def test_reliability_curve_bins_and_counts() -> None:
    y_true = np.array([0, 1, 1, 1])
    y_score = np.array([0.05, 0.15, 0.95, 1.0])
    curve = reliability_curve(y_true, y_score, n_bins=10)
    assert list(curve.columns[:1]) == ["bin"]
    assert curve["bin"].tolist() == [0, 1, 9]
    assert curve["count"].tolist() == [1, 1, 2]
    assert curve.loc[curve["bin"] == 9, "mean_predicted"].item() == pytest.approx(0.975)
    assert len(reliability_curve(y_true, y_score, n_bins=10, include_empty=True)) == 10


def test_binary_metrics_at_threshold_counts_and_zero_denominators() -> None:
    y_true = np.array([1, 1, 0, 0, 0])
    y_score = np.array([0.9, 0.4, 0.5, 0.2, 0.1])
    metrics = binary_metrics_at_threshold(y_true, y_score, threshold=0.5)
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (1, 1, 2, 1)
    assert metrics["sensitivity"] == 0.5
    assert metrics["specificity"] == pytest.approx(2 / 3)
    # A score equal to the threshold is called abnormal.
    assert binary_metrics_at_threshold(y_true, y_score, threshold=0.4)["tp"] == 2
    nothing_positive = binary_metrics_at_threshold(y_true, y_score, threshold=2.0)
    assert math.isnan(nothing_positive["ppv"])
    assert nothing_positive["specificity"] == 1.0


def test_bootstrap_ci_batched_equals_generic_resampling(scored: tuple[np.ndarray, ...]) -> None:
    y_true, y_score, groups = scored
    fast = bootstrap_ci(auroc, y_true, y_score, groups, n_boot=50, seed=3)

    def generic_auroc(a: np.ndarray, b: np.ndarray) -> float:
        return float(roc_auc_score(a, b))

    slow = bootstrap_ci(generic_auroc, y_true, y_score, groups, n_boot=50, seed=3)
    assert fast.low == pytest.approx(slow.low, abs=1e-12)
    assert fast.high == pytest.approx(slow.high, abs=1e-12)
    assert fast.low < fast.estimate < fast.high


def test_bootstrap_ci_resamples_patients_not_rows() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, size=200)
    y_score = np.clip(0.5 + 0.2 * (y_true - 0.5) + rng.normal(0, 0.25, 200), 0, 1)
    patients = np.arange(200)
    base = bootstrap_ci(auroc, y_true, y_score, patients, n_boot=400, seed=0)
    # Every patient now has 10 identical images: no new information about new patients.
    copies = 10
    dup = bootstrap_ci(
        auroc,
        np.repeat(y_true, copies),
        np.repeat(y_score, copies),
        np.repeat(patients, copies),
        n_boot=400,
        seed=0,
    )
    width_base, width_dup = base.high - base.low, dup.high - dup.low
    assert dup.estimate == pytest.approx(base.estimate)
    assert width_dup == pytest.approx(width_base, rel=0.25)
    # Row-level resampling (each row its own group) would shrink the width by about sqrt(10).
    rows = bootstrap_ci(
        auroc,
        np.repeat(y_true, copies),
        np.repeat(y_score, copies),
        np.arange(200 * copies),
        n_boot=400,
        seed=0,
    )
    assert rows.high - rows.low < 0.5 * width_dup


def test_bootstrap_ci_counts_single_class_resamples() -> None:
    # One abnormal patient among four: a quarter-ish of resamples miss it entirely.
    y_true = np.array([1, 0, 0, 0])
    y_score = np.array([0.9, 0.1, 0.2, 0.3])
    result = bootstrap_ci(auroc, y_true, y_score, np.arange(4), n_boot=500, seed=0)
    expected_missing = 500 * (3 / 4) ** 4
    assert abs(result.n_skipped - expected_missing) < 40
    assert result.n_boot == 500


def test_bootstrap_ci_rejects_bad_arguments(scored: tuple[np.ndarray, ...]) -> None:
    y_true, y_score, groups = scored
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_ci(auroc, y_true, y_score, groups, n_boot=0)
    with pytest.raises(ConfigError, match="groups"):
        bootstrap_ci(auroc, y_true, y_score, groups[:-1])
    with pytest.raises(ConfigError, match="y_true"):
        auroc([0, 2], [0.1, 0.2])


def test_summarise_scores_keys_and_prefix(scored: tuple[np.ndarray, ...]) -> None:
    y_true, y_score, groups = scored
    summary = summarise_scores(y_true, y_score, groups, n_boot=100, seed=0, prefix="val_")
    for key in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "auprc_ci_low", "brier"):
        assert f"val_{key}" in summary
    assert summary["val_n"] == y_true.size
    assert summary["val_n_positive"] == int(y_true.sum())
    assert summary["val_n_patients"] == 300
    assert summary["val_auroc_ci_low"] <= summary["val_auroc"] <= summary["val_auroc_ci_high"]
    assert summary["val_ece"] == pytest.approx(expected_calibration_error(y_true, y_score))


def test_scores_outside_unit_interval_are_rejected_for_calibration_metrics() -> None:
    with pytest.raises(ConfigError, match="sigmoid"):
        brier([0, 1], [-1.0, 2.0])
