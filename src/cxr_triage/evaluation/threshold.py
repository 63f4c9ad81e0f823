"""Choose the operating threshold of the winning model on validation scores.

A study is called abnormal when ``y_score >= threshold``. Every policy searches the same finite
set of candidate thresholds: the distinct validation scores plus one value just above the
largest (calls nothing abnormal). Between two consecutive candidates the confusion matrix on
validation does not change, so nothing is lost by restricting the search to them.

Policies (``policy=``):

* ``"target_sensitivity"`` (triage default): the **highest** threshold whose sensitivity is at
  least ``target_sensitivity``, i.e. the one that auto-clears the most normal studies while
  missing no more abnormal ones than allowed. With ``require_ci=True`` the lower bound of the
  patient-bootstrap 95% CI of sensitivity must reach the target instead of the point estimate.
* ``"target_specificity"``: the **lowest** threshold whose specificity is at least
  ``target_specificity``.
* ``"youden"``: maximises Youden's J = sensitivity + specificity - 1.
* ``"min_cost"``: minimises the expected misclassification cost per study,
  ``(cost_fn * FN + cost_fp * FP) / n``. Only the ratio of the costs matters; the default 10:1
  says that missing an abnormal study is ten times worse than an unnecessary read.

Ties (equal J or equal cost) go to the lower threshold, i.e. the higher sensitivity, because a
triage tool should err towards reading a study.

Targets are always reachable on a validation set holding both classes (a threshold at or below
the lowest abnormal score has sensitivity 1, one above every score has specificity 1, and every
bootstrap resample agrees with them), so no fallback is needed; an unreachable target can only
come from bad arguments, which raise :class:`~cxr_triage.errors.ConfigError`. A threshold that
auto-clears no normal study is legal but useless and is logged as a warning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.metrics import (
    _check_groups,
    _check_scores,
    _patient_weights,
    binary_metrics_at_threshold,
)

__all__ = ["POLICIES", "OperatingPoint", "auto_clear_share", "select_threshold"]

logger = logging.getLogger(__name__)

POLICIES = ("target_sensitivity", "target_specificity", "youden", "min_cost")
_BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class OperatingPoint:
    """The chosen threshold and what it does on the validation split.

    Attributes:
        threshold: call a study abnormal when its score is ``>= threshold``.
        policy: the policy that chose it.
        sensitivity: on validation (true positive rate).
        specificity: on validation (true negative rate).
        ppv: positive predictive value; NaN when nothing is called abnormal.
        npv: negative predictive value; NaN when nothing is called normal.
        tp: true positives.
        fp: false positives.
        tn: true negatives.
        fn: false negatives.
        n: validation studies.
        target: the policy's target (sensitivity or specificity), ``None`` for the others.
        expected_cost: cost per study with ``cost_fn``/``cost_fp`` (``min_cost`` only).
        sensitivity_ci_low: lower patient-bootstrap bound of sensitivity, when computed.
        sensitivity_ci_high: upper bound, when computed.
    """

    threshold: float
    policy: str
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    tp: int
    fp: int
    tn: int
    fn: int
    n: int
    target: float | None = None
    expected_cost: float | None = None
    sensitivity_ci_low: float | None = None
    sensitivity_ci_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-safe dict (NaN becomes ``None``)."""
        return {
            key: None if isinstance(value, float) and math.isnan(value) else value
            for key, value in asdict(self).items()
        }


def _candidates(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion counts at every candidate threshold, in increasing threshold order."""
    unique = np.unique(y_score)
    above_max = np.nextafter(unique[-1], np.inf)
    thresholds = np.append(unique, above_max)
    pos_sorted = np.sort(y_score[y_true == 1])
    neg_sorted = np.sort(y_score[y_true == 0])
    # Counts of scores strictly below each threshold are the studies called normal.
    fn = np.searchsorted(pos_sorted, thresholds, side="left")
    tn = np.searchsorted(neg_sorted, thresholds, side="left")
    tp = pos_sorted.size - fn
    fp = neg_sorted.size - tn
    return {"threshold": thresholds, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _check_target(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{name} must be in (0, 1], got {value!r}; e.g. 0.95")


def _sensitivity_lower_bounds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    codes: np.ndarray,
    n_boot: int,
    seed: int,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap CI of sensitivity at each positive score taken as threshold.

    Returns the candidate thresholds (distinct positive scores, decreasing) with the lower and
    upper percentile bounds of sensitivity at each. Resamples without an abnormal study are
    dropped (sensitivity is undefined there).
    """
    positive = np.flatnonzero(y_true == 1)
    order = positive[np.argsort(-y_score[positive], kind="mergesort")]
    scores_desc = y_score[order]
    # The last row of each run of tied scores is where that threshold's count is complete.
    ends = np.flatnonzero(np.r_[scores_desc[1:] != scores_desc[:-1], True])
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // max(1, codes.size))
    sens_rows = []
    done = 0
    while done < n_boot:
        size = min(block, n_boot - done)
        weights = _patient_weights(rng, codes, size)[:, order]
        cumulative = np.cumsum(weights, axis=1)[:, ends]
        total = cumulative[:, -1:]
        keep = total[:, 0] > 0
        sens_rows.append(cumulative[keep] / total[keep])
        done += size
    sens = np.concatenate(sens_rows, axis=0)
    if sens.shape[0] == 0:
        nan = np.full(ends.size, np.nan)
        return scores_desc[ends], nan, nan
    low, high = np.quantile(sens, [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    return scores_desc[ends], low, high


def select_threshold(
    y_true: Any,
    y_score: Any,
    policy: str = "target_sensitivity",
    *,
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.9,
    require_ci: bool = False,
    groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    cost_fn: float = 10.0,
    cost_fp: float = 1.0,
) -> OperatingPoint:
    """Choose the operating threshold on validation scores (see the module docstring).

    Args:
        y_true: 0/1 validation labels, 1 = abnormal.
        y_score: validation scores of class 1 (usually calibrated probabilities).
        policy: ``"target_sensitivity"``, ``"target_specificity"``, ``"youden"`` or
            ``"min_cost"``.
        target_sensitivity: minimum sensitivity for ``"target_sensitivity"``.
        target_specificity: minimum specificity for ``"target_specificity"``.
        require_ci: with ``"target_sensitivity"``, require the lower CI bound of sensitivity
            (patient bootstrap) to reach the target; needs ``groups``.
        groups: patient id of each row; when given with ``"target_sensitivity"``, the CI of
            sensitivity at the chosen threshold is reported even without ``require_ci``.
        n_boot: bootstrap resamples for the sensitivity CI.
        seed: seed of the bootstrap.
        alpha: 1 minus the CI coverage.
        cost_fn: cost of a missed abnormal study (``"min_cost"``).
        cost_fp: cost of a normal study called abnormal (``"min_cost"``).

    Returns:
        The operating point with its validation metrics.

    Raises:
        ConfigError: for an unknown policy, a target outside (0, 1], non-positive costs,
            ``require_ci`` without ``groups``, or validation data without both classes.
    """
    y_true_arr, y_score_arr = _check_inputs(policy, y_true, y_score, require_ci, groups)
    n_pos = int(y_true_arr.sum())
    counts = _candidates(y_true_arr, y_score_arr)
    thresholds = counts["threshold"]
    sensitivity = counts["tp"] / n_pos
    specificity = counts["tn"] / (y_true_arr.size - n_pos)
    target: float | None = None
    expected_cost: float | None = None
    ci: tuple[float | None, float | None] = (None, None)

    if policy == "target_sensitivity":
        _check_target("target_sensitivity", target_sensitivity)
        target = float(target_sensitivity)
        threshold, ci = _target_sensitivity_threshold(
            y_true_arr, y_score_arr, thresholds, sensitivity, target,
            groups=groups, require_ci=require_ci, n_boot=n_boot, seed=seed, alpha=alpha,
        )  # fmt: skip
    elif policy == "target_specificity":
        _check_target("target_specificity", target_specificity)
        target = float(target_specificity)
        threshold = float(thresholds[np.flatnonzero(specificity >= target)[0]])
    elif policy == "youden":
        j = sensitivity + specificity - 1.0
        threshold = float(thresholds[int(np.argmax(j))])
    else:
        threshold, expected_cost = _min_cost_threshold(counts, y_true_arr.size, cost_fn, cost_fp)
    return _operating_point(
        y_true_arr, y_score_arr, threshold, policy, target=target,
        expected_cost=expected_cost, ci=ci,
    )  # fmt: skip


def _check_inputs(
    policy: str, y_true: Any, y_score: Any, require_ci: bool, groups: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Validated labels and scores for :func:`select_threshold` (its ConfigErrors)."""
    if policy not in POLICIES:
        raise ConfigError(
            f"unknown threshold policy {policy!r}; choose one of {', '.join(map(repr, POLICIES))}"
        )
    y_true_arr, y_score_arr = _check_scores(y_true, y_score, probabilities=False)
    n_pos = int(y_true_arr.sum())
    if n_pos == 0 or n_pos == y_true_arr.size:
        raise ConfigError(
            "select_threshold needs validation data with both normal and abnormal studies; "
            f"got {n_pos} abnormal of {y_true_arr.size}"
        )
    if require_ci and groups is None:
        raise ConfigError("require_ci=True needs groups (the patient_id of each row)")
    return y_true_arr, y_score_arr


def _target_sensitivity_threshold(
    y_true: np.ndarray,
    y_score: np.ndarray,
    thresholds: np.ndarray,
    sensitivity: np.ndarray,
    target: float,
    *,
    groups: Any,
    require_ci: bool,
    n_boot: int,
    seed: int,
    alpha: float,
) -> tuple[float, tuple[float | None, float | None]]:
    """The highest threshold whose sensitivity (or, with ``require_ci``, its patient-bootstrap
    lower bound) reaches ``target``, and the sensitivity CI there (None, None without groups)."""
    if groups is None:
        ok = np.flatnonzero(sensitivity >= target)
        return float(thresholds[ok[-1]]), (None, None)
    codes = _check_groups(groups, y_true.size)
    pos_thresholds, low, high = _sensitivity_lower_bounds(
        y_true, y_score, codes, n_boot, seed, alpha
    )
    # Lower bounds fall as the threshold rises, so the first failing one ends the search.
    if require_ci:
        ok = np.flatnonzero(low >= target)
        index = ok[0] if ok.size else pos_thresholds.size - 1
        threshold = float(pos_thresholds[index])
        if not ok.size:
            logger.warning("no threshold reaches the sensitivity CI target; using the lowest")
    else:
        ok = np.flatnonzero(sensitivity >= target)
        threshold = float(thresholds[ok[-1]])
        index = int(np.flatnonzero(pos_thresholds <= threshold)[0])
    return threshold, (float(low[index]), float(high[index]))


def _min_cost_threshold(
    counts: dict[str, np.ndarray], n: int, cost_fn: float, cost_fp: float
) -> tuple[float, float]:
    """The threshold of least expected cost per study, and that cost."""
    if not (cost_fn > 0 and cost_fp > 0):
        raise ConfigError(f"cost_fn and cost_fp must be positive, got {cost_fn!r} and {cost_fp!r}")
    cost = (cost_fn * counts["fn"] + cost_fp * counts["fp"]) / n
    best = int(np.argmin(cost))
    return float(counts["threshold"][best]), float(cost[best])


def _operating_point(
    y_true: np.ndarray,
    y_score: np.ndarray,
    threshold: float,
    policy: str,
    *,
    target: float | None,
    expected_cost: float | None,
    ci: tuple[float | None, float | None],
) -> OperatingPoint:
    """The operating point at ``threshold`` with its validation metrics."""
    metrics = binary_metrics_at_threshold(y_true, y_score, threshold)
    if metrics["tn"] == 0:
        logger.warning(
            "threshold %.6g calls every normal validation study abnormal (policy %s)",
            threshold,
            policy,
        )
    return OperatingPoint(
        threshold=threshold,
        policy=policy,
        sensitivity=metrics["sensitivity"],
        specificity=metrics["specificity"],
        ppv=metrics["ppv"],
        npv=metrics["npv"],
        tp=int(metrics["tp"]),
        fp=int(metrics["fp"]),
        tn=int(metrics["tn"]),
        fn=int(metrics["fn"]),
        n=int(metrics["n"]),
        target=target,
        expected_cost=expected_cost,
        sensitivity_ci_low=ci[0],
        sensitivity_ci_high=ci[1],
    )


def auto_clear_share(y_true: Any, y_score: Any, threshold: float) -> dict[str, float]:
    """How much of the worklist a threshold would auto-clear (studies scored below it).

    Args:
        y_true: 0/1 labels, 1 = abnormal.
        y_score: scores of class 1.
        threshold: the operating threshold.

    Returns:
        ``normal_cleared_share``: share of normal studies below the threshold (= specificity);
        ``worklist_cleared_share``: share of all studies below it (removed from the worklist);
        ``abnormal_cleared_share``: share of abnormal studies below it (= 1 - sensitivity, the
        missed ones). NaN where a class is absent.

    Raises:
        ConfigError: on bad inputs.
    """
    metrics = binary_metrics_at_threshold(y_true, y_score, threshold)
    n = metrics["n"]
    n_neg = metrics["tn"] + metrics["fp"]
    n_pos = metrics["tp"] + metrics["fn"]
    return {
        "normal_cleared_share": metrics["tn"] / n_neg if n_neg else math.nan,
        "worklist_cleared_share": (metrics["tn"] + metrics["fn"]) / n if n else math.nan,
        "abnormal_cleared_share": metrics["fn"] / n_pos if n_pos else math.nan,
    }
