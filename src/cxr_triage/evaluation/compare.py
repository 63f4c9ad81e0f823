"""Pick the winning candidate on validation metrics by a written rule, and tabulate the comparison.

The comparison table has one row per candidate (a transfer head such as ``logreg`` or the
fine-tuned network) and a ``candidate`` column; every other column is a validation metric such as
``val_auroc``, ``val_auroc_ci_low``, ``val_ece`` or ``val_brier``.

The rule (:class:`WinnerRule`): take the best value of ``primary``; every candidate within
``tie_tolerance`` of it (absolute difference, inclusive) is tied; among the tied, the best
``tie_breaker`` wins. A remaining exact tie goes to the better primary value, then to the
candidate name in alphabetical order, so the choice is deterministic. Candidates whose primary
value is NaN cannot win. The default (AUROC within 0.005 counts as equal, then lower ECE)
reflects the study: discrimination first, calibration to break near ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.config import WinnerRule
from cxr_triage.errors import ConfigError

__all__ = [
    "Comparison",
    "Winner",
    "WinnerRule",
    "choose_winner",
    "compare_candidates",
    "comparison_markdown",
]


@dataclass(frozen=True)
class Winner:
    """The chosen candidate and why.

    Attributes:
        candidate: name of the winner.
        primary_value: its value of the primary metric.
        tied: candidates tied on the primary metric (the winner included), best first.
        reason: one sentence for logs and the model card.
    """

    candidate: str
    primary_value: float
    tied: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-safe dict."""
        return {
            "candidate": self.candidate,
            "primary_value": self.primary_value,
            "tied": list(self.tied),
            "reason": self.reason,
        }


def _check_table(table: pd.DataFrame, columns: list[str]) -> None:
    missing = [column for column in ["candidate", *columns] if column not in table.columns]
    if missing:
        raise ConfigError(
            f"comparison table lacks column(s) {missing}; it has {list(table.columns)}. "
            "Set the winner rule's primary/tie_breaker to existing metric columns"
        )
    if table["candidate"].duplicated().any():
        duplicated = sorted(table.loc[table["candidate"].duplicated(), "candidate"].astype(str))
        raise ConfigError(f"candidate names must be unique in the table, repeated: {duplicated}")


def choose_winner(table: pd.DataFrame, rule: WinnerRule | None = None) -> Winner:
    """Choose the winning candidate.

    Args:
        table: one row per candidate with a ``candidate`` column and metric columns.
        rule: the rule; defaults to ``WinnerRule()``.

    Returns:
        The winner, the tied candidates and the reason.

    Raises:
        ConfigError: when a column named by the rule is missing, names repeat, the tolerance is
            negative, or no candidate has a finite primary value.
    """
    rule = rule or WinnerRule()
    if not (rule.tie_tolerance >= 0 and math.isfinite(rule.tie_tolerance)):
        raise ConfigError(f"tie_tolerance must be >= 0, got {rule.tie_tolerance!r}")
    _check_table(table, [rule.primary, rule.tie_breaker])
    sign = 1.0 if rule.higher_is_better else -1.0
    tb_sign = 1.0 if rule.tie_breaker_higher_is_better else -1.0
    primary = sign * pd.to_numeric(table[rule.primary], errors="coerce").to_numpy(float)
    breaker = tb_sign * pd.to_numeric(table[rule.tie_breaker], errors="coerce").to_numpy(float)
    names = table["candidate"].astype(str).to_numpy()
    valid = np.isfinite(primary)
    if not valid.any():
        raise ConfigError(f"no candidate has a finite {rule.primary}; nothing to compare")
    best = primary[valid].max()
    # A small epsilon keeps a gap of exactly tie_tolerance tied despite float rounding.
    tied_mask = valid & (primary >= best - rule.tie_tolerance - 1e-12)
    tied_index = np.flatnonzero(tied_mask)
    # NaN tie-breakers sort last; then primary, then name: a total, deterministic order.
    ordered = sorted(
        tied_index,
        key=lambda i: (
            -(breaker[i] if np.isfinite(breaker[i]) else -np.inf),
            -primary[i],
            names[i],
        ),
    )
    winner = int(ordered[0])
    primary_value = float(sign * primary[winner])
    if len(ordered) == 1:
        reason = f"{names[winner]} has the best {rule.primary} ({primary_value:.4f})"
    else:
        reason = (
            f"{len(ordered)} candidates within {rule.tie_tolerance:g} of the best "
            f"{rule.primary}; {names[winner]} has the "
            f"{'highest' if rule.tie_breaker_higher_is_better else 'lowest'} {rule.tie_breaker} "
            f"({tb_sign * breaker[winner]:.4f})"
        )
    return Winner(
        candidate=str(names[winner]),
        primary_value=primary_value,
        tied=tuple(str(names[i]) for i in ordered),
        reason=reason,
    )


def _format_cell(value: Any, float_format: str) -> str:
    if isinstance(value, float | np.floating):
        return "NaN" if math.isnan(value) else float_format.format(value)
    return str(value).replace("|", "\\|")


def comparison_markdown(
    table: pd.DataFrame,
    columns: list[str] | None = None,
    *,
    winner: str | None = None,
    float_format: str = "{:.3f}",
) -> str:
    """Render the comparison table as a GitHub-flavoured Markdown table.

    Args:
        table: the comparison table (one row per candidate).
        columns: columns to show, in order; all columns by default.
        winner: candidate name to mark in bold.
        float_format: format of floating-point cells.

    Returns:
        The Markdown text, ending with a newline.

    Raises:
        ConfigError: when a requested column is missing.
    """
    columns = list(table.columns) if columns is None else list(columns)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ConfigError(f"comparison_markdown: unknown column(s) {missing}")
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if table[c].dtype == object else "---:" for c in columns) + "|",
    ]
    for _, row in table[columns].iterrows():
        cells = [_format_cell(row[column], float_format) for column in columns]
        if winner is not None and "candidate" in table.columns:
            if str(table.loc[row.name, "candidate"]) == winner:
                cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Comparison:
    """Output of :func:`compare_candidates`.

    Attributes:
        table: one row per candidate: discrimination on raw scores (ranking is what a monotone
            recalibration cannot change), calibration before (``raw_val_*``) and after
            (``val_*``, out-of-fold) recalibration.
        calibrated: out-of-fold recalibrated val scores, one column per candidate.
        calibrators: per candidate, the calibrator fitted on all of val (the one to deploy).
    """

    table: pd.DataFrame
    calibrated: pd.DataFrame
    calibrators: dict[str, Any]


def compare_candidates(
    val_scores: pd.DataFrame,
    y_true: np.ndarray,
    groups: np.ndarray,
    recalibration: dict[str, str],
    *,
    folds: int = 5,
    n_boot: int = 1000,
    n_bins: int = 15,
    seed: int = 0,
) -> Comparison:
    """Measure every candidate on val, with patient-bootstrap CIs and honest recalibration.

    Args:
        val_scores: ``image_id`` plus one column of raw val scores per candidate.
        y_true: val labels aligned with the rows of ``val_scores``.
        groups: patient ids aligned with the rows.
        recalibration: calibrator name per candidate (``none``, ``temperature``, ...).
        folds: patient folds for out-of-fold recalibrated metrics.
        n_boot: bootstrap resamples for the CIs.
        n_bins: reliability bins for the ECE.
        seed: bootstrap and fold seed.
    """
    from cxr_triage.evaluation.calibration import cross_fit_calibration
    from cxr_triage.evaluation.metrics import (
        brier,
        expected_calibration_error,
        log_loss,
        summarise_scores,
    )

    candidates = [c for c in val_scores.columns if c != "image_id"]
    if not candidates:
        raise ConfigError("no candidate scores to compare; check the transfer and finetune stages")
    rows, calibrated, calibrators = [], {"image_id": val_scores["image_id"].to_numpy()}, {}
    for name in candidates:
        raw = val_scores[name].to_numpy(dtype=np.float64)
        method = recalibration.get(name, "none")
        summary = summarise_scores(y_true, raw, groups, n_boot=n_boot, seed=seed, n_bins=n_bins)
        oof, calibrator = cross_fit_calibration(
            method, y_true, raw, groups, folds=folds, seed=seed
        )
        calibrated[name], calibrators[name] = oof, calibrator
        rows.append(
            {
                "candidate": name,
                "recalibration": method,
                **{
                    f"val_{k}": summary[k]
                    for k in (
                        "auroc",
                        "auroc_ci_low",
                        "auroc_ci_high",
                        "auprc",
                        "auprc_ci_low",
                        "auprc_ci_high",
                    )
                },
                "val_brier": brier(y_true, oof),
                "val_ece": expected_calibration_error(y_true, oof, n_bins=n_bins),
                "val_log_loss": log_loss(y_true, oof),
                "raw_val_brier": summary["brier"],
                "raw_val_ece": summary["ece"],
                "raw_val_log_loss": summary["log_loss"],
                "n": summary["n"],
            }
        )
    return Comparison(pd.DataFrame(rows), pd.DataFrame(calibrated), calibrators)
