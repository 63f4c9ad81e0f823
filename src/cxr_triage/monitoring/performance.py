"""Realised performance: the window's predictions graded by the radiologists' fed-back reads.

For the predictions of the monitored model that have a read (:mod:`cxr_triage.inference.feedback`)
this computes, at the operating point the predictions were made with (the threshold logged with
each of them): sensitivity and specificity (``binary_metrics_at_threshold``) and the expected
calibration error, each with a bootstrap 95% CI (``bootstrap_ci``, resampling predictions), plus
the mean predicted probability against the observed abnormal rate.

The **target** is the package's: ``operating_point.target`` when its threshold was chosen for a
target sensitivity, else ``params.threshold.target_sensitivity``. The check **alerts** when the
CI's lower bound of the realised sensitivity is below the target. Below
``monitor.feedback_min_abnormal`` abnormal reads (or normal reads, for specificity) the status
is "insufficient feedback": a CI from a handful of reads would alert on noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.config import Params
from cxr_triage.evaluation.metrics import (
    binary_metrics_at_threshold,
    bootstrap_ci,
    expected_calibration_error,
)
from cxr_triage.vocabulary import ABNORMAL

__all__ = [
    "BELOW_TARGET",
    "INSUFFICIENT_FEEDBACK",
    "NO_FEEDBACK",
    "OK",
    "Estimate",
    "RealisedPerformance",
    "realised_performance",
]

OK, BELOW_TARGET = "ok", "below_target"
INSUFFICIENT_FEEDBACK, NO_FEEDBACK = "insufficient_feedback", "no_feedback"
TRUE_LABEL = "true_label"  # the fed-back read, joined to the log's rows


@dataclass(frozen=True)
class Estimate:
    """A rate with its bootstrap 95% CI (None where it cannot be computed)."""

    estimate: float | None
    low: float | None
    high: float | None

    def text(self) -> str:
        if self.estimate is None:
            return "n/a"
        if self.low is None or self.high is None:
            return f"{self.estimate:.3g}"
        return f"{self.estimate:.3g} (95% CI {self.low:.3g}-{self.high:.3g})"


_NONE = Estimate(None, None, None)


@dataclass(frozen=True)
class RealisedPerformance:
    """The window's predictions against their fed-back reads.

    Attributes:
        status: ``ok``, ``below_target`` (the alert), ``insufficient_feedback`` or
            ``no_feedback`` (none of the window's predictions has a read).
        reason: one sentence saying why.
        n_labelled: predictions of the model with a read.
        n_abnormal, n_normal: of them, read abnormal / normal.
        n_other_models: reads of predictions by other models (not graded here).
        threshold: the operating point of the graded predictions.
        target_sensitivity: the package's target, and ``target_source`` where it comes from.
        sensitivity, specificity: at the threshold, with CIs.
        ece: expected calibration error (15 bins), with its CI.
        mean_predicted, observed_abnormal_rate: calibration at a glance.
        tp, fp, tn, fn: the confusion counts.
    """

    status: str
    reason: str
    n_labelled: int = 0
    n_abnormal: int = 0
    n_normal: int = 0
    n_other_models: int = 0
    threshold: float | None = None
    target_sensitivity: float | None = None
    target_source: str | None = None
    sensitivity: Estimate = _NONE
    specificity: Estimate = _NONE
    ece: Estimate = _NONE
    mean_predicted: float | None = None
    observed_abnormal_rate: float | None = None
    confusion: dict[str, int] = field(default_factory=dict)

    @property
    def alert(self) -> bool:
        return self.status == BELOW_TARGET

    def one_line(self) -> str:
        """Realised sensitivity and specificity with their CIs, for logs and alerts."""
        if self.status in (NO_FEEDBACK, INSUFFICIENT_FEEDBACK):
            return f"realised performance: {self.reason}"
        return (
            f"realised sensitivity {self.sensitivity.text()} "
            f"{'<' if self.alert else '>='} target {self.target_sensitivity:.3g} (CI low), "
            f"specificity {self.specificity.text()}, ECE {self.ece.text()}, "
            f"on {self.n_abnormal} abnormal and {self.n_normal} normal reads"
        )


def target_sensitivity(package_info: dict[str, Any], params: Params) -> tuple[float, str]:
    """The sensitivity the operating point promises, and where that figure comes from."""
    point = package_info.get("operating_point") or {}
    if point.get("policy") == "target_sensitivity" and point.get("target") is not None:
        return float(point["target"]), "package operating point"
    return float(params.threshold.target_sensitivity), "params threshold.target_sensitivity"


def realised_performance(
    rows: pd.DataFrame, *, model_tag: str | None, package_info: dict[str, Any], params: Params
) -> RealisedPerformance:
    """Grade the window's predictions of ``model_tag`` by their fed-back reads.

    Args:
        rows: the window's rows with ``prob_abnormal``, ``threshold``, ``model_tag`` and
            ``true_label`` (None where no read came back).
        model_tag: the monitored model; other models' predictions are counted, not graded.
        package_info: its ``package.json`` (operating point).
        params: ``params.monitor`` (minimum reads, bootstrap size), ``params.seed``,
            ``params.threshold`` (the fallback target).
    """
    target, source = target_sensitivity(package_info, params)
    graded, n_other = _graded_rows(rows, model_tag)
    counts = {
        "n_labelled": len(graded),
        "n_abnormal": int((graded[TRUE_LABEL] == ABNORMAL).sum()),
        "n_other_models": n_other,
        "target_sensitivity": target,
        "target_source": source,
    }
    counts["n_normal"] = counts["n_labelled"] - counts["n_abnormal"]
    if graded.empty:
        reason = f"no fed-back read for the window's predictions of {model_tag}"
        return RealisedPerformance(NO_FEEDBACK, reason, **counts)
    minimum = params.monitor.feedback_min_reads
    if min(counts["n_abnormal"], counts["n_normal"]) < minimum:
        reason = (
            f"{counts['n_abnormal']} abnormal and {counts['n_normal']} normal reads; "
            f"monitor.feedback_min_reads ({minimum}) of each are needed"
        )
        return RealisedPerformance(INSUFFICIENT_FEEDBACK, reason, **counts)
    return _graded(graded, counts, params)


def _graded_rows(rows: pd.DataFrame, model_tag: str | None) -> tuple[pd.DataFrame, int]:
    """The rows with a read, of the monitored model; and the count of other models' reads."""
    if rows.empty or TRUE_LABEL not in rows:
        return pd.DataFrame(columns=[TRUE_LABEL, "prob_abnormal", "threshold"]), 0
    read = rows[rows[TRUE_LABEL].notna()]
    mine = read["model_tag"].astype(str) == str(model_tag)
    return read[mine].reset_index(drop=True), int((~mine).sum())


def _graded(graded: pd.DataFrame, counts: dict[str, Any], params: Params) -> RealisedPerformance:
    y_true = (graded[TRUE_LABEL] == ABNORMAL).to_numpy(dtype=int)
    y_score = graded["prob_abnormal"].to_numpy(dtype=float)
    threshold = float(graded["threshold"].median())  # one model: one logged threshold
    at_threshold = binary_metrics_at_threshold(y_true, y_score, threshold)
    groups = np.arange(len(graded))  # each prediction is its own resampling unit
    seed, n_boot = params.seed, params.monitor.feedback_n_boot

    def rate(name: str) -> Estimate:
        ci = bootstrap_ci(
            lambda t, s: binary_metrics_at_threshold(t, s, threshold)[name],
            y_true,
            y_score,
            groups,
            n_boot=n_boot,
            seed=seed,
        )
        return _estimate(ci.estimate, ci.low, ci.high)

    ece = bootstrap_ci(
        expected_calibration_error, y_true, y_score, groups, n_boot=n_boot, seed=seed
    )
    sensitivity = rate("sensitivity")
    low, target = sensitivity.low, counts["target_sensitivity"]
    below = low is not None and low < target
    reason = (
        f"the 95% CI of the realised sensitivity starts at {low:.3g}, "
        f"{'below' if below else 'at or above'} the target {target:.3g}"
        if low is not None
        else "no usable bootstrap resample for the sensitivity's CI"
    )
    return RealisedPerformance(
        status=BELOW_TARGET if below else OK,
        reason=reason,
        threshold=threshold,
        sensitivity=sensitivity,
        specificity=rate("specificity"),
        ece=_estimate(ece.estimate, ece.low, ece.high),
        mean_predicted=float(y_score.mean()),
        observed_abnormal_rate=float(y_true.mean()),
        confusion={k: at_threshold[k] for k in ("tp", "fp", "tn", "fn")},
        **counts,
    )


def _estimate(*values: float) -> Estimate:
    return Estimate(*(None if v is None or not math.isfinite(v) else float(v) for v in values))
