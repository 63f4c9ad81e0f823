"""The comparison protocol: candidates scored out of fold over train+val, chosen by a rule that
respects uncertainty.

Every candidate (a frozen-feature classifier of the zoo, the fine-tuned network, an ensemble,
the metadata-only baseline) brings out-of-fold probabilities ``(repeats, n)`` on the same
patient-grouped folds of the development set (train + val). :func:`summarise_candidates` turns
them into one table row per candidate:

* ``cv_auroc``: the mean over repeats of the pooled out-of-fold AUROC; its standard error and
  95% CI come from a patient bootstrap (the same resamples for every candidate, so they are
  paired);
* ``cv_auroc_gap`` and ``cv_auroc_gap_se``: the distance to the best eligible candidate and the
  paired bootstrap standard error of that distance (computed on the repeats both have);
* calibration after recalibration, cross-fitted on the out-of-fold scores (``cv_ece``,
  ``cv_brier``, ``cv_log_loss``; ``raw_cv_ece`` before), and the calibrator to deploy, fitted
  on every out-of-fold score;
* ``cv_auroc_seen`` / ``cv_auroc_unseen``: the AUROC on rows of the train split (whose finding
  labels pretrained the backbone) and of the val split (never seen by it): their gap measures
  how much the backbone's label exposure flatters the cross-validation.

The rule (:func:`choose_winner`, :class:`~cxr_triage.config.WinnerRule`): among eligible
candidates (the metadata baseline never is), take the best ``primary``; with ``rule: one_se``
(the one-standard-error rule of Breiman et al., *Classification and Regression Trees*, 1984),
every candidate within ``se_multiplier`` bootstrap standard errors of the best candidate's
estimate is tied with it; with ``rule: paired_se``, every candidate whose gap is within
``se_multiplier`` paired-bootstrap standard errors of that gap (a paired test, narrower when
candidates err on the same images); with ``rule: tolerance``, every candidate within
``tie_tolerance``. Among the tied, ``tie_breaker`` decides: by default
``complexity`` (:data:`COMPLEXITY`: the simplest model), so a more complex candidate, an
ensemble included, wins only when it is better by more than the noise of the comparison. A
remaining tie goes to the better primary, then to the name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.config import WinnerRule
from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.calibration import Calibrator, cross_fit_calibration, make_calibrator
from cxr_triage.evaluation.metrics import (
    _auprc_weighted,
    _auroc_weighted,
    _check_groups,
    _patient_weights,
    auroc,
    brier,
    expected_calibration_error,
    log_loss,
)

__all__ = [
    "COMPLEXITY",
    "Comparison",
    "Winner",
    "WinnerRule",
    "choose_winner",
    "complexity_of",
    "comparison_markdown",
    "summarise_candidates",
]

# Simplest first: parameters fitted and moving parts at deployment. Ensembles rank above all of
# their members (10 + number of members); the metadata baseline is never eligible anyway.
COMPLEXITY: dict[str, int] = {
    "metadata_only": 0,
    "logreg": 1,
    "linear_svm": 2,
    "knn": 3,
    "rbf_svm": 4,
    "random_forest": 5,
    "hist_gb": 5,
    "mlp": 6,
    "finetuned": 7,
}
_ENSEMBLE_COMPLEXITY = 10


def complexity_of(candidate: str, n_members: int = 0) -> int:
    """Complexity rank of a candidate (see :data:`COMPLEXITY`); ensembles ``10 + members``."""
    if n_members:
        return _ENSEMBLE_COMPLEXITY + n_members
    return COMPLEXITY.get(candidate, max(COMPLEXITY.values()))


@dataclass(frozen=True)
class Winner:
    """The chosen candidate and why.

    Attributes:
        candidate: name of the winner.
        primary_value: its value of the primary metric.
        best: the eligible candidate with the best primary value.
        tied: candidates tied with the best under the rule (the winner included), in the
            order the tie-breaker ranks them.
        reason: the rule's reasoning in one or two sentences (logs, report, model card).
    """

    candidate: str
    primary_value: float
    best: str
    tied: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-safe dict."""
        return {
            "candidate": self.candidate,
            "primary_value": self.primary_value,
            "best": self.best,
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
    """Choose the winning candidate by the rule (see the module docstring).

    Args:
        table: one row per candidate: ``candidate``, the rule's ``primary`` and
            ``tie_breaker`` columns, ``<primary>_se`` for ``rule: one_se`` or
            ``<primary>_gap_se`` for ``rule: paired_se``, and optionally
            a boolean ``eligible`` column (False rows are reported, never chosen).
        rule: the rule; defaults to ``WinnerRule()``.

    Returns:
        The winner, the tied candidates and the reasoning.

    Raises:
        ConfigError: a column named by the rule is missing, names repeat, or no eligible
            candidate has a finite primary value.
    """
    rule = rule or WinnerRule()
    se_columns = {"one_se": f"{rule.primary}_se", "paired_se": f"{rule.primary}_gap_se"}
    if rule.rule not in (*se_columns, "tolerance"):
        raise ConfigError(f"winner rule must be one_se, paired_se or tolerance, got {rule.rule!r}")
    se_column = se_columns.get(rule.rule)
    needed = [rule.primary, rule.tie_breaker] + ([se_column] if se_column else [])
    _check_table(table, needed)
    sign = 1.0 if rule.higher_is_better else -1.0
    tb_sign = 1.0 if rule.tie_breaker_higher_is_better else -1.0
    primary = sign * pd.to_numeric(table[rule.primary], errors="coerce").to_numpy(float)
    breaker = tb_sign * pd.to_numeric(table[rule.tie_breaker], errors="coerce").to_numpy(float)
    names = table["candidate"].astype(str).to_numpy()
    eligible = (
        table["eligible"].astype(bool).to_numpy()
        if "eligible" in table.columns
        else np.ones(len(table), bool)
    )
    valid = np.isfinite(primary) & eligible
    if not valid.any():
        raise ConfigError(f"no eligible candidate has a finite {rule.primary}; nothing to compare")
    best_index = min(np.flatnonzero(valid), key=lambda i: (-primary[i], names[i]))
    best = primary[best_index]
    if se_column:
        se = pd.to_numeric(table[se_column], errors="coerce").to_numpy(float)
        se = np.where(np.isfinite(se), se, 0.0)
        # one_se: the best candidate's own standard error, the same band for everyone.
        band = rule.se_multiplier * (se if rule.rule == "paired_se" else se[best_index])
    else:
        band = np.full(len(table), rule.tie_tolerance)
    # A small epsilon keeps a gap of exactly the band tied despite float rounding.
    tied_mask = valid & (primary >= best - band - 1e-12)
    tied_mask[best_index] = True
    ordered = sorted(
        np.flatnonzero(tied_mask),
        key=lambda i: (
            -(breaker[i] if np.isfinite(breaker[i]) else -np.inf),
            -primary[i],
            names[i],
        ),
    )
    winner = int(ordered[0])
    value = float(sign * primary[winner])
    best_name = str(names[best_index])
    band_text = {
        "one_se": f"{rule.se_multiplier:g} standard error(s) of its estimate "
        f"({rule.se_multiplier * (se[best_index] if se_column else 0):.4f})",
        "paired_se": f"{rule.se_multiplier:g} paired-bootstrap standard error(s) of the gap",
        "tolerance": f"{rule.tie_tolerance:g}",
    }[rule.rule]
    if len(ordered) == 1:
        reason = (
            f"{best_name} has the best {rule.primary} ({value:.4f}) and no other eligible "
            f"candidate is within {band_text} of it"
        )
    else:
        others = ", ".join(str(names[i]) for i in ordered if i != best_index)
        reason = (
            f"{best_name} has the best {rule.primary} ({sign * best:.4f}); within {band_text} "
            f"to it: {others}. Among these {len(ordered)} the "
            f"{'highest' if rule.tie_breaker_higher_is_better else 'lowest'} "
            f"{rule.tie_breaker} wins: {names[winner]} ({rule.primary} {value:.4f}, "
            f"{rule.tie_breaker} {tb_sign * breaker[winner]:g})"
        )
    return Winner(
        candidate=str(names[winner]),
        primary_value=value,
        best=best_name,
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
    """Output of :func:`summarise_candidates`.

    Attributes:
        table: one row per candidate (see the module docstring), best ``cv_auroc`` first.
        calibrated: per candidate, cross-fitted recalibrated out-of-fold scores ``(R, n)``.
        calibrators: per candidate, the calibrator fitted on all its out-of-fold scores.
        boot_auroc: per candidate, bootstrap AUROCs ``(R, B)`` on the shared resamples.
    """

    table: pd.DataFrame
    calibrated: dict[str, np.ndarray]
    calibrators: dict[str, Calibrator]
    boot_auroc: dict[str, np.ndarray] = field(repr=False)


def _as_repeats(scores: np.ndarray, n: int, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[None] if scores.ndim == 1 else scores
    if scores.ndim != 2 or scores.shape[1] != n or not np.isfinite(scores).all():
        raise ConfigError(
            f"candidate {name!r}: out-of-fold scores must be finite (repeats, {n}), "
            f"got shape {scores.shape}"
        )
    return scores


def summarise_candidates(
    scores: Mapping[str, np.ndarray],
    y_true: np.ndarray,
    groups: np.ndarray,
    recalibration: Mapping[str, str],
    *,
    eligible: Mapping[str, bool] | None = None,
    complexity: Mapping[str, int] | None = None,
    seen: np.ndarray | None = None,
    calibration_folds: int = 5,
    n_boot: int = 1000,
    n_bins: int = 15,
    seed: int = 0,
) -> Comparison:
    """Measure every candidate from its out-of-fold scores (see the module docstring).

    Args:
        scores: per candidate, out-of-fold probabilities ``(repeats, n)`` (or ``(n,)``);
            candidates may have different numbers of repeats (repeat ``r`` must be the same
            fold assignment for all).
        y_true: 0/1 labels of the ``n`` development rows.
        groups: patient id per row.
        recalibration: calibrator name per candidate (``none`` when absent).
        eligible: per candidate, whether it may win (default True).
        complexity: per candidate, its complexity rank (default :func:`complexity_of`).
        seen: boolean per row: the backbone was pretrained on this row's labels (train split);
            None skips the seen/unseen columns.
        calibration_folds: patient folds for cross-fitting the calibrators.
        n_boot: patient-bootstrap resamples, shared by all candidates (paired).
        n_bins: reliability bins for the ECE.
        seed: bootstrap and calibration-fold seed.

    Returns:
        The comparison.

    Raises:
        ConfigError: no candidates, or scores of the wrong shape.
    """
    if not scores:
        raise ConfigError("no candidate scores to compare; check the transfer and finetune stages")
    y = np.asarray(y_true, dtype=np.float64)
    codes = _check_groups(groups, y.size)
    weights = _patient_weights(np.random.default_rng(seed), codes, n_boot)
    eligible = dict(eligible or {})
    rows, calibrated, calibrators, boots = [], {}, {}, {}
    for name, raw_scores in scores.items():
        s = _as_repeats(raw_scores, y.size, name)
        method = recalibration.get(name, "none")
        boot = np.stack([_auroc_weighted(y, s[r], weights) for r in range(len(s))])
        boots[name] = boot
        mean_boot = np.nanmean(boot, axis=0)
        cal = np.stack(
            [
                cross_fit_calibration(
                    method, y, s[r], groups, folds=calibration_folds, seed=seed + r
                )[0]
                for r in range(len(s))
            ]
        )
        calibrated[name] = cal
        calibrators[name] = make_calibrator(method).fit(np.tile(y, len(s)), s.reshape(-1))
        row = {
            "candidate": name,
            "recalibration": method,
            "repeats": len(s),
            "cv_auroc": float(np.mean([auroc(y, s[r]) for r in range(len(s))])),
            "cv_auroc_se": float(np.nanstd(mean_boot)),
            "cv_auroc_ci_low": float(np.nanpercentile(mean_boot, 2.5)),
            "cv_auroc_ci_high": float(np.nanpercentile(mean_boot, 97.5)),
            "cv_auroc_sd_repeats": float(np.std([auroc(y, s[r]) for r in range(len(s))])),
            "cv_auprc": float(
                np.mean([_auprc_weighted(y, s[r], np.ones((1, y.size)))[0] for r in range(len(s))])
            ),
            "cv_brier": float(np.mean([brier(y, c) for c in cal])),
            "cv_ece": float(np.mean([expected_calibration_error(y, c, n_bins) for c in cal])),
            "cv_log_loss": float(np.mean([log_loss(y, c) for c in cal])),
            "raw_cv_ece": float(np.mean([expected_calibration_error(y, r, n_bins) for r in s])),
            "complexity": int((complexity or {}).get(name, complexity_of(name))),
            "eligible": bool(eligible.get(name, True)),
            "n": int(y.size),
        }
        if seen is not None:
            seen_mask = np.asarray(seen, bool)
            for key, mask in (("seen", seen_mask), ("unseen", ~seen_mask)):
                ok = np.unique(y[mask]).size == 2
                row[f"cv_auroc_{key}"] = (
                    float(np.mean([auroc(y[mask], r[mask]) for r in s])) if ok else math.nan
                )
        rows.append(row)
    table = pd.DataFrame(rows)
    ok = table["eligible"] & np.isfinite(table["cv_auroc"])
    best = table.loc[ok, "cv_auroc"].idxmax() if ok.any() else table["cv_auroc"].idxmax()
    best_name = table.loc[best, "candidate"]
    gaps, gap_se = [], []
    for name in table["candidate"]:
        common = min(len(boots[name]), len(boots[best_name]))
        diff = np.nanmean(boots[best_name][:common], axis=0) - np.nanmean(
            boots[name][:common], axis=0
        )
        value = table.loc[table["candidate"] == name, "cv_auroc"].iloc[0]
        gaps.append(float(table.loc[best, "cv_auroc"] - value))
        gap_se.append(0.0 if name == best_name else float(np.nanstd(diff)))
    table["cv_auroc_gap"], table["cv_auroc_gap_se"] = gaps, gap_se
    table = table.sort_values(["cv_auroc", "candidate"], ascending=[False, True])
    return Comparison(table.reset_index(drop=True), calibrated, calibrators, boots)
