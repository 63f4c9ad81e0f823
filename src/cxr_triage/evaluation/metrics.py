"""Discrimination and calibration metrics for binary scores, with patient-level bootstrap CIs.

Conventions used throughout ``cxr_triage.evaluation``:

* label 1 is *abnormal* (the positive class), 0 is *normal*;
* ``y_score`` is the predicted probability of class 1, in [0, 1];
* a study is predicted positive when ``y_score >= threshold``.

Confidence intervals resample **patients** (``groups``) with replacement, never rows: images of
one patient are correlated, and resampling rows would pretend they are independent and give CIs
that are too narrow. A patient drawn k times contributes each of its rows k times, which is the
same as weighting its rows by k; the built-in metrics use that to evaluate all resamples at once
as one weight matrix (see :func:`bootstrap_ci`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.errors import ConfigError

__all__ = [
    "ConfidenceInterval",
    "auprc",
    "auroc",
    "binary_metrics_at_threshold",
    "bootstrap_ci",
    "brier",
    "expected_calibration_error",
    "log_loss",
    "mean_ci",
    "reliability_curve",
    "summarise_scores",
]

logger = logging.getLogger(__name__)

# log(1e-7) bounds the loss of one confidently wrong study at ~16 nats, so a single saturated score
# cannot dominate the mean.
LOG_LOSS_EPS = 1e-7
# Resamples are evaluated in blocks so that a block's weight matrix stays near 32 MB of float64.
_BLOCK_CELLS = 4_000_000


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _check_scores(
    y_true: Any, y_score: Any, *, probabilities: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``y_true`` as float 0/1 and ``y_score`` as float, both 1-D, or raise ConfigError."""
    y_true_arr = np.asarray(y_true)
    y_score_arr = np.asarray(y_score, dtype=float)
    if y_true_arr.ndim != 1 or y_score_arr.ndim != 1:
        raise ConfigError(
            f"y_true and y_score must be 1-D, got shapes {y_true_arr.shape} and "
            f"{y_score_arr.shape}; pass the probability of class 1 (abnormal) only"
        )
    if y_true_arr.shape != y_score_arr.shape:
        raise ConfigError(
            f"y_true has {y_true_arr.size} values but y_score has {y_score_arr.size}; "
            "pass one score per study"
        )
    if y_true_arr.dtype == bool:
        y_true_arr = y_true_arr.astype(float)
    else:
        y_true_arr = y_true_arr.astype(float)
        if not np.isin(y_true_arr, (0.0, 1.0)).all():
            bad = np.unique(y_true_arr[~np.isin(y_true_arr, (0.0, 1.0))])[:5]
            raise ConfigError(
                f"y_true must contain only 0 (normal) and 1 (abnormal), found {bad.tolist()}; "
                "map labels to 0/1 first"
            )
    if not np.isfinite(y_score_arr).all():
        raise ConfigError("y_score contains NaN or infinite values; score every study")
    if probabilities and y_score_arr.size and (y_score_arr.min() < 0 or y_score_arr.max() > 1):
        raise ConfigError(
            f"y_score must be probabilities in [0, 1], got range "
            f"[{y_score_arr.min():.4g}, {y_score_arr.max():.4g}]; apply a sigmoid to logits"
        )
    return y_true_arr, y_score_arr


def _check_groups(groups: Any, n: int) -> np.ndarray:
    """Return integer codes of ``groups`` (one per row) or raise ConfigError."""
    groups_arr = np.asarray(groups)
    if groups_arr.ndim != 1 or groups_arr.size != n:
        raise ConfigError(
            f"groups must give one patient_id per row ({n} rows), got shape {groups_arr.shape}"
        )
    codes, _ = pd.factorize(pd.Series(groups_arr), use_na_sentinel=False)
    return codes.astype(np.intp)


# --------------------------------------------------------------------------------------------
# weighted, batched implementations: weights has shape (n_resamples, n_rows)
# --------------------------------------------------------------------------------------------


def _tie_blocks(y_score: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return the sorting order and the start index of each run of tied scores."""
    order = np.argsort(-y_score if descending else y_score, kind="mergesort")
    sorted_scores = y_score[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    return order, starts


def _auroc_weighted(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC per weight row; ties count one half; NaN when a class has no weight."""
    order, starts = _tie_blocks(y_score, descending=False)
    w = weights[:, order]
    pos = np.add.reduceat(w * y_true[order], starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - y_true[order]), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)


def _auprc_weighted(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (step-wise, as sklearn) per weight row; NaN without positives."""
    order, starts = _tie_blocks(y_score, descending=True)
    w = weights[:, order]
    tp = np.cumsum(np.add.reduceat(w * y_true[order], starts, axis=1), axis=1)
    fp = np.cumsum(np.add.reduceat(w * (1.0 - y_true[order]), starts, axis=1), axis=1)
    n_pos = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
        recall_step = np.diff(np.concatenate([np.zeros_like(n_pos), tp], axis=1), axis=1) / n_pos
        result = (recall_step * precision).sum(axis=1)
    result[n_pos[:, 0] <= 0] = np.nan
    return result


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return weights @ values / weights.sum(axis=1)


def _brier_weighted(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return _weighted_mean((y_score - y_true) ** 2, weights)


def _log_loss_weighted(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    clipped = np.clip(y_score, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    losses = -(y_true * np.log(clipped) + (1.0 - y_true) * np.log1p(-clipped))
    return _weighted_mean(losses, weights)


def _bin_index(y_score: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each score: [k/n, (k+1)/n), with 1.0 in the last bin."""
    return np.minimum((y_score * n_bins).astype(np.intp), n_bins - 1)


def _ece_weighted(
    y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray, n_bins: int = 15
) -> np.ndarray:
    one_hot = np.zeros((y_score.size, n_bins))
    one_hot[np.arange(y_score.size), _bin_index(y_score, n_bins)] = 1.0
    count = weights @ one_hot
    # |sum(score - label)| per bin over the total weight equals sum_b (n_b/N) |conf_b - acc_b|.
    gap = np.abs(weights @ (one_hot * (y_score - y_true)[:, None]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return gap.sum(axis=1) / count.sum(axis=1)


def _confusion_weighted(
    y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    y_pred = (y_score >= threshold).astype(float)
    tp = weights @ (y_true * y_pred)
    fp = weights @ ((1.0 - y_true) * y_pred)
    fn = weights @ (y_true * (1.0 - y_pred))
    tn = weights @ ((1.0 - y_true) * (1.0 - y_pred))
    return tp, fp, tn, fn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# --------------------------------------------------------------------------------------------
# public point metrics
# --------------------------------------------------------------------------------------------


def auroc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve (ties count one half, as in sklearn's ``roc_auc_score``).

    Args:
        y_true: 0/1 labels, 1 = abnormal.
        y_score: scores; any real values (only their order matters).

    Returns:
        The AUROC, or NaN when ``y_true`` holds a single class (a slice with no abnormal
        studies has no ROC curve; callers decide how to report it).

    Raises:
        ConfigError: on mismatched shapes or labels other than 0/1.
    """
    y_true_arr, y_score_arr = _check_scores(y_true, y_score, probabilities=False)
    return float(_auroc_weighted(y_true_arr, y_score_arr, np.ones((1, y_true_arr.size)))[0])


def auprc(y_true: Any, y_score: Any) -> float:
    """Area under the precision-recall curve as average precision (sklearn's step-wise sum).

    Args:
        y_true: 0/1 labels, 1 = abnormal.
        y_score: scores; any real values.

    Returns:
        The average precision, or NaN when there is no positive study.

    Raises:
        ConfigError: on mismatched shapes or labels other than 0/1.
    """
    y_true_arr, y_score_arr = _check_scores(y_true, y_score, probabilities=False)
    return float(_auprc_weighted(y_true_arr, y_score_arr, np.ones((1, y_true_arr.size)))[0])


def brier(y_true: Any, y_score: Any) -> float:
    """Brier score: mean squared difference between probability and label (lower is better).

    Args:
        y_true: 0/1 labels, 1 = abnormal.
        y_score: probabilities of class 1.

    Returns:
        The Brier score (NaN for empty input).

    Raises:
        ConfigError: on mismatched shapes, bad labels or scores outside [0, 1].
    """
    y_true_arr, y_score_arr = _check_scores(y_true, y_score)
    return float(_brier_weighted(y_true_arr, y_score_arr, np.ones((1, y_true_arr.size)))[0])


def log_loss(y_true: Any, y_score: Any, eps: float = LOG_LOSS_EPS) -> float:
    """Mean binary cross-entropy in nats, with scores clipped to ``[eps, 1 - eps]``.

    Args:
        y_true: 0/1 labels, 1 = abnormal.
        y_score: probabilities of class 1.
        eps: clipping bound; a score of exactly 0 or 1 would otherwise give an infinite loss.

    Returns:
        The mean log loss.

    Raises:
        ConfigError: on mismatched shapes, bad labels or scores outside [0, 1].
    """
    y_true_arr, y_score_arr = _check_scores(y_true, y_score)
    clipped = np.clip(y_score_arr, eps, 1.0 - eps)
    losses = -(y_true_arr * np.log(clipped) + (1.0 - y_true_arr) * np.log1p(-clipped))
    return float(losses.mean()) if losses.size else math.nan


def expected_calibration_error(y_true: Any, y_score: Any, n_bins: int = 15) -> float:
    """Expected calibration error over equal-width probability bins.

    The interval [0, 1] is cut into ``n_bins`` bins of equal width, ``[k/n, (k+1)/n)``, the last
    one closed so that a score of 1.0 is counted. ECE is the count-weighted mean, over non-empty
    bins, of ``|mean predicted probability - fraction of abnormal studies|``. Equal-width bins
    (not equal-mass) follow Guo et al. 2017, so values are comparable with the literature; with
    few studies in extreme bins the estimate is noisy and biased upwards.

    Args:
        y_true: 0/1 labels, 1 = abnormal.
        y_score: probabilities of class 1.
        n_bins: number of equal-width bins.

    Returns:
        The ECE in [0, 1].

    Raises:
        ConfigError: on bad inputs or ``n_bins < 1``.
    """
    _check_n_bins(n_bins)
    y_true_arr, y_score_arr = _check_scores(y_true, y_score)
    weights = np.ones((1, y_true_arr.size))
    return float(_ece_weighted(y_true_arr, y_score_arr, weights, n_bins=n_bins)[0])


def _check_n_bins(n_bins: int) -> None:
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}; 10 or 15 is usual")


def reliability_curve(
    y_true: Any, y_score: Any, n_bins: int = 15, *, include_empty: bool = False
) -> pd.DataFrame:
    """Reliability diagram data, using the same equal-width bins as the ECE.

    Args:
        y_true: 0/1 labels, 1 = abnormal.
        y_score: probabilities of class 1.
        n_bins: number of equal-width bins over [0, 1].
        include_empty: keep bins without studies (with NaN means); off by default so that plots
            do not draw gaps.

    Returns:
        One row per bin: ``bin`` (0-based), ``bin_lower``, ``bin_upper``, ``mean_predicted``,
        ``fraction_positive`` and ``count``.

    Raises:
        ConfigError: on bad inputs or ``n_bins < 1``.
    """
    _check_n_bins(n_bins)
    y_true_arr, y_score_arr = _check_scores(y_true, y_score)
    bins = _bin_index(y_score_arr, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    sum_score = np.bincount(bins, weights=y_score_arr, minlength=n_bins)
    sum_true = np.bincount(bins, weights=y_true_arr, minlength=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    table = pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "mean_predicted": _ratio(sum_score, count.astype(float)),
            "fraction_positive": _ratio(sum_true, count.astype(float)),
            "count": count,
        }
    )
    if not include_empty:
        table = table[table["count"] > 0].reset_index(drop=True)
    return table


def binary_metrics_at_threshold(y_true: Any, y_score: Any, threshold: float) -> dict[str, float]:
    """Confusion counts and rates when studies with ``y_score >= threshold`` are called abnormal.

    A rate whose denominator is zero (e.g. PPV when nothing is called abnormal, sensitivity on a
    slice without abnormal studies) is NaN rather than 0 or 1: it is undefined, and a made-up
    value would hide that in a table.

    Args:
        y_true: 0/1 labels, 1 = abnormal.
        y_score: scores on the same scale as ``threshold``.
        threshold: decision threshold.

    Returns:
        ``threshold``, ``n``, ``tp``, ``fp``, ``tn``, ``fn``, ``sensitivity``, ``specificity``,
        ``ppv``, ``npv`` and ``accuracy``.

    Raises:
        ConfigError: on bad inputs or a non-finite threshold.
    """
    if not math.isfinite(float(threshold)):
        raise ConfigError(f"threshold must be a finite number, got {threshold!r}")
    y_true_arr, y_score_arr = _check_scores(y_true, y_score, probabilities=False)
    weights = np.ones((1, y_true_arr.size))
    tp, fp, tn, fn = (
        v[0] for v in _confusion_weighted(y_true_arr, y_score_arr, weights, threshold)
    )
    rates = {
        "sensitivity": _ratio(np.array(tp), np.array(tp + fn)),
        "specificity": _ratio(np.array(tn), np.array(tn + fp)),
        "ppv": _ratio(np.array(tp), np.array(tp + fp)),
        "npv": _ratio(np.array(tn), np.array(tn + fn)),
        "accuracy": _ratio(np.array(tp + tn), np.array(float(y_true_arr.size))),
    }
    return {
        "threshold": float(threshold),
        "n": int(y_true_arr.size),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        **{key: float(value) for key, value in rates.items()},
    }


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with its patient-bootstrap percentile interval.

    Attributes:
        estimate: the metric on the full data.
        low: lower percentile bound (``alpha / 2``); NaN when no resample was usable.
        high: upper percentile bound (``1 - alpha / 2``).
        alpha: 1 minus the coverage (0.05 for a 95% interval).
        n_boot: resamples drawn.
        n_skipped: resamples dropped because they held a single class (or the metric was NaN).
    """

    estimate: float
    low: float
    high: float
    alpha: float
    n_boot: int
    n_skipped: int

    def to_dict(self) -> dict[str, float | int]:
        """Return the fields as a plain dict."""
        return asdict(self)


_BATCHED: dict[Callable[..., float], Callable[..., np.ndarray]] = {
    auroc: _auroc_weighted,
    auprc: _auprc_weighted,
    brier: _brier_weighted,
    log_loss: _log_loss_weighted,
    expected_calibration_error: _ece_weighted,
}


def _patient_weights(rng: np.random.Generator, codes: np.ndarray, n_boot: int) -> np.ndarray:
    """Row weights of ``n_boot`` patient resamples: how often each row's patient was drawn."""
    n_patients = int(codes.max()) + 1 if codes.size else 0
    # A multinomial of n_patients over equal cells is exactly "draw patients with replacement".
    counts = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_boot)
    return counts[:, codes].astype(float)


def _bootstrap_values(
    batched: Callable[..., np.ndarray] | None,
    metric_fn: Callable[..., float],
    y_true: np.ndarray,
    y_score: np.ndarray,
    codes: np.ndarray,
    n_boot: int,
    seed: int,
    needs_both_classes: bool = True,
) -> tuple[np.ndarray, int]:
    """Metric value of each resample (NaN where skipped) and the count of one-class resamples."""
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // max(1, y_true.size))
    values = np.empty(n_boot)
    one_class = 0
    done = 0
    while done < n_boot:
        size = min(block, n_boot - done)
        weights = _patient_weights(rng, codes, size)
        n_pos = weights @ y_true
        n_neg = weights.sum(axis=1) - n_pos
        both = (n_pos > 0) & (n_neg > 0)
        one_class += int((~both).sum())
        if not needs_both_classes:
            both = np.ones(size, dtype=bool)
        chunk = np.full(size, np.nan)
        if batched is not None:
            chunk[both] = batched(y_true, y_score, weights[both])
        else:
            rows = np.arange(y_true.size)
            for i in np.flatnonzero(both):
                # np.repeat turns weights back into the resampled rows for arbitrary metrics.
                index = np.repeat(rows, weights[i].astype(np.intp))
                chunk[i] = metric_fn(y_true[index], y_score[index])
        values[done : done + size] = chunk
        done += size
    return values, one_class


def bootstrap_ci(
    metric_fn: Callable[..., float],
    y_true: Any,
    y_score: Any,
    groups: Any,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    needs_both_classes: bool = True,
) -> ConfidenceInterval:
    """Percentile confidence interval of a metric, resampling patients with replacement.

    Each resample draws as many patients as there are, with replacement, and keeps all rows of
    each drawn patient (as often as it was drawn). Resamples that contain a single class are
    skipped and counted in ``n_skipped`` (unless ``needs_both_classes`` is False: a mean of
    per-image values, such as a localisation hit rate, needs no negatives), as are resamples
    where ``metric_fn`` returns NaN.
    The metrics of this module (``auroc``, ``auprc``, ``brier``, ``log_loss``,
    ``expected_calibration_error``) are evaluated for all resamples at once; any other callable
    ``metric_fn(y_true, y_score) -> float`` is called once per resample.

    Args:
        metric_fn: the metric, called as ``metric_fn(y_true, y_score)``.
        y_true: 0/1 labels, 1 = abnormal.
        y_score: scores of class 1.
        groups: patient id of each row.
        n_boot: number of resamples.
        seed: seed of the resampling generator.
        alpha: 1 minus the coverage; 0.05 gives a 95% interval.
        needs_both_classes: skip resamples with a single class of ``y_true``.

    Returns:
        The estimate on all rows with its interval and the skipped count.

    Raises:
        ConfigError: on bad inputs, ``n_boot < 1`` or ``alpha`` outside (0, 1).
    """
    if not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}; 1000 is usual")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}; 0.05 gives a 95% interval")
    y_true_arr, y_score_arr = _check_scores(y_true, y_score, probabilities=False)
    codes = _check_groups(groups, y_true_arr.size)
    estimate = float(metric_fn(y_true_arr, y_score_arr))
    if y_true_arr.size == 0:
        return ConfidenceInterval(estimate, math.nan, math.nan, alpha, int(n_boot), int(n_boot))
    values, _ = _bootstrap_values(
        _BATCHED.get(metric_fn),
        metric_fn,
        y_true_arr,
        y_score_arr,
        codes,
        int(n_boot),
        seed,
        needs_both_classes,
    )
    valid = values[np.isfinite(values)]
    n_skipped = int(n_boot) - valid.size
    if n_skipped:
        logger.info(
            "bootstrap of %s skipped %d of %d resamples", _name(metric_fn), n_skipped, n_boot
        )
    if valid.size == 0:
        return ConfidenceInterval(estimate, math.nan, math.nan, alpha, int(n_boot), n_skipped)
    low, high = np.quantile(valid, [alpha / 2.0, 1.0 - alpha / 2.0])
    return ConfidenceInterval(estimate, float(low), float(high), alpha, int(n_boot), n_skipped)


def _mean_of_values(y_true: np.ndarray, y_score: np.ndarray) -> float:
    return float(np.mean(y_score)) if len(y_score) else math.nan


def mean_ci(
    values: Any, groups: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> ConfidenceInterval:
    """The mean of per-image values (a hit rate, IoUs, curve areas, shares) with its
    patient-bootstrap interval (:func:`bootstrap_ci`, no class needed).

    Args:
        values: one number per image.
        groups: patient id of each image.
        n_boot: resamples.
        seed: seed of the resampling.
        alpha: 1 minus the coverage.
    """
    values = np.asarray(values, dtype=float)
    return bootstrap_ci(
        _mean_of_values,
        np.zeros(values.size),
        values,
        groups,
        n_boot,
        seed,
        alpha,
        needs_both_classes=False,
    )


def _name(metric_fn: Callable[..., float]) -> str:
    return getattr(metric_fn, "__name__", repr(metric_fn))


def summarise_scores(
    y_true: Any,
    y_score: Any,
    groups: Any,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    n_bins: int = 15,
    alpha: float = 0.05,
    prefix: str = "",
) -> dict[str, float | int]:
    """All headline metrics of one candidate's probabilities on one split.

    Args:
        y_true: 0/1 labels, 1 = abnormal.
        y_score: probabilities of class 1.
        groups: patient id of each row, for the bootstrap.
        n_boot: patient-bootstrap resamples for the AUROC and AUPRC intervals.
        seed: seed of the resampling.
        n_bins: equal-width bins of the ECE.
        alpha: 1 minus the CI coverage.
        prefix: prepended to every key, e.g. ``"val_"`` to get ``val_auroc``.

    Returns:
        ``auroc``, ``auroc_ci_low``, ``auroc_ci_high``, ``auprc``, ``auprc_ci_low``,
        ``auprc_ci_high``, ``brier``, ``ece``, ``log_loss``, ``n``, ``n_positive``,
        ``n_patients`` and ``n_boot_skipped`` (resamples with one class), each with ``prefix``.

    Raises:
        ConfigError: on bad inputs.
    """
    y_true_arr, y_score_arr = _check_scores(y_true, y_score)
    codes = _check_groups(groups, y_true_arr.size)
    auroc_ci = bootstrap_ci(auroc, y_true_arr, y_score_arr, groups, n_boot, seed, alpha)
    auprc_ci = bootstrap_ci(auprc, y_true_arr, y_score_arr, groups, n_boot, seed, alpha)
    summary: dict[str, float | int] = {
        "auroc": auroc_ci.estimate,
        "auroc_ci_low": auroc_ci.low,
        "auroc_ci_high": auroc_ci.high,
        "auprc": auprc_ci.estimate,
        "auprc_ci_low": auprc_ci.low,
        "auprc_ci_high": auprc_ci.high,
        "brier": brier(y_true_arr, y_score_arr),
        "ece": expected_calibration_error(y_true_arr, y_score_arr, n_bins=n_bins),
        "log_loss": log_loss(y_true_arr, y_score_arr),
        "n": int(y_true_arr.size),
        "n_positive": int(y_true_arr.sum()),
        "n_patients": int(np.unique(codes).size),
        "n_boot_skipped": auroc_ci.n_skipped,
    }
    return {f"{prefix}{key}": value for key, value in summary.items()}
