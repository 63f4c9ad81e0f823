"""Metrics per subgroup (sex, age band, view, site) and the largest gaps between subgroups.

Slices smaller than ``min_count`` studies are listed with ``small=True`` and NaN metrics: a
sensitivity from five studies says nothing, and reporting it would create gaps out of noise.
Missing slice values are grouped as ``"unknown"`` so that no study silently drops out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.metrics import auroc, binary_metrics_at_threshold

__all__ = ["AGE_BANDS", "GAP_METRICS", "age_band", "largest_gaps", "slice_metrics"]

logger = logging.getLogger(__name__)

AGE_BANDS = ("<40", "40-59", "60-79", "80+", "unknown")
GAP_METRICS = ("auroc", "sensitivity", "specificity", "ppv", "npv")
UNKNOWN = "unknown"
# Ages above this are data-entry errors (NIH has a few ages in the hundreds), not patients.
_MAX_AGE = 120


def age_band(age: Any) -> str:
    """Age band of one patient: ``"<40"``, ``"40-59"``, ``"60-79"``, ``"80+"`` or ``"unknown"``.

    Args:
        age: age in years; ``None``, NaN, non-numeric, negative or above 120 give ``"unknown"``.

    Returns:
        The band label (one of :data:`AGE_BANDS`).
    """
    try:
        value = float(age)
    except (TypeError, ValueError):
        return UNKNOWN
    if not math.isfinite(value) or value < 0 or value > _MAX_AGE:
        return UNKNOWN
    if value < 40:
        return "<40"
    if value < 60:
        return "40-59"
    if value < 80:
        return "60-79"
    return "80+"


def _slice_row(
    part: pd.DataFrame,
    y_true_col: str,
    y_score_col: str,
    threshold: float,
    groups_col: str | None,
    min_count: int,
) -> dict[str, Any]:
    y_true = part[y_true_col].to_numpy()
    y_score = part[y_score_col].to_numpy(float)
    n = int(y_true.size)
    row: dict[str, Any] = {
        "n": n,
        "n_patients": int(part[groups_col].nunique()) if groups_col else n,
        "n_positive": int(np.sum(y_true)),
        "prevalence": float(np.mean(y_true)) if n else math.nan,
        "small": n < min_count,
    }
    if row["small"]:
        row.update(dict.fromkeys(GAP_METRICS, math.nan))
        return row
    metrics = binary_metrics_at_threshold(y_true, y_score, threshold)
    row["auroc"] = auroc(y_true, y_score)
    row.update({key: metrics[key] for key in ("sensitivity", "specificity", "ppv", "npv")})
    return row


def slice_metrics(
    df: pd.DataFrame,
    y_true_col: str,
    y_score_col: str,
    threshold: float,
    slices: Sequence[str] = ("sex", "age_band", "view_position", "site"),
    groups_col: str | None = "patient_id",
    min_count: int = 30,
) -> pd.DataFrame:
    """Metrics overall and for each value of each slice column.

    ``age_band`` is derived from an ``age`` column with :func:`age_band` when ``df`` has no
    ``age_band`` column.

    Args:
        df: one row per study with labels, scores and slice columns.
        y_true_col: column of 0/1 labels, 1 = abnormal.
        y_score_col: column of scores.
        threshold: operating threshold (``score >= threshold`` is abnormal).
        slices: columns to slice by.
        groups_col: patient id column, for the ``n_patients`` count; ``None`` to skip it.
        min_count: slices with fewer studies get ``small=True`` and NaN metrics.

    Returns:
        One row per (``slice``, ``value``), starting with ``("overall", "all")``, with ``n``,
        ``n_patients``, ``n_positive``, ``prevalence``, ``small``, ``auroc`` (NaN if the slice
        holds one class), ``sensitivity``, ``specificity``, ``ppv`` and ``npv`` (NaN for a zero
        denominator).

    Raises:
        ConfigError: when a named column is missing or ``min_count`` is negative.
    """
    if min_count < 0:
        raise ConfigError(f"min_count must be >= 0, got {min_count!r}")
    needed = [y_true_col, y_score_col] + ([groups_col] if groups_col else [])
    missing = [column for column in needed if column not in df.columns]
    frame = df
    if "age_band" in slices and "age_band" not in df.columns:
        if "age" not in df.columns:
            missing.append("age_band (or age)")
        else:
            frame = df.assign(age_band=df["age"].map(age_band))
    missing += [s for s in slices if s != "age_band" and s not in df.columns]
    if missing:
        raise ConfigError(
            f"slice_metrics: column(s) {missing} not in the table (it has {list(df.columns)}); "
            "pass slices= with the columns you have"
        )
    args = (y_true_col, y_score_col, threshold, groups_col, min_count)
    rows = [{"slice": "overall", "value": "all", **_slice_row(frame, *args)}]
    for column in slices:
        values = frame[column].astype(object).where(frame[column].notna(), UNKNOWN).astype(str)
        for value, part in frame.groupby(values, sort=True):
            rows.append({"slice": column, "value": str(value), **_slice_row(part, *args)})
    return pd.DataFrame(rows)


def largest_gaps(slice_table: pd.DataFrame, metrics: Sequence[str] = GAP_METRICS) -> pd.DataFrame:
    """For each metric, the slice whose values differ most (max minus min across its values).

    The ``overall`` row, ``small`` slices, ``unknown`` values and NaN metrics are ignored.

    Args:
        slice_table: output of :func:`slice_metrics`.
        metrics: metric columns to examine.

    Returns:
        One row per metric: ``metric``, ``slice``, ``gap``, ``best_value`` (slice value with
        the highest metric), ``best``, ``worst_value``, ``worst``. Metrics with fewer than two
        comparable values in every slice get ``slice=None`` and NaN gap.

    Raises:
        ConfigError: when a metric column is missing.
    """
    missing = [m for m in (*metrics, "slice", "value") if m not in slice_table.columns]
    if missing:
        raise ConfigError(f"largest_gaps: slice table lacks column(s) {missing}")
    usable = slice_table[
        (slice_table["slice"] != "overall")
        & (slice_table["value"] != UNKNOWN)
        & ~slice_table.get("small", pd.Series(False, index=slice_table.index)).astype(bool)
    ]
    rows = []
    for metric in metrics:
        best_row: dict[str, Any] = {
            "metric": metric,
            "slice": None,
            "gap": math.nan,
            "best_value": None,
            "best": math.nan,
            "worst_value": None,
            "worst": math.nan,
        }
        for column, part in usable.groupby("slice", sort=True):
            values = part[["value", metric]].dropna()
            if len(values) < 2:
                continue
            high = values.loc[values[metric].idxmax()]
            low = values.loc[values[metric].idxmin()]
            gap = float(high[metric] - low[metric])
            if math.isnan(best_row["gap"]) or gap > best_row["gap"]:
                best_row = {
                    "metric": metric,
                    "slice": column,
                    "gap": gap,
                    "best_value": high["value"],
                    "best": float(high[metric]),
                    "worst_value": low["value"],
                    "worst": float(low[metric]),
                }
        rows.append(best_row)
    return pd.DataFrame(rows)
