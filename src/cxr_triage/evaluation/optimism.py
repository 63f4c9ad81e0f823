"""How optimistic is the winner's cross-validated AUROC? Two estimators of the selection's
optimism (the winner's curse of choosing the best of many noisy estimates).

* :func:`bbc_cv`: bootstrap bias-corrected CV (Tsamardinos, Greasidou & Borboudakis, "Bootstrapping
  the out-of-sample predictions for efficient and accurate cross-validation", Machine Learning
  107, 2018). The out-of-fold matrix (every configuration of every candidate, the fine-tuned
  network and the ensembles) is resampled by patient; on each resample's in-bag rows the
  selection is re-run (each zoo candidate's best configuration, then the winner rule with the
  full-data standard errors of the gaps), and the chosen configuration is scored on the
  out-of-bag rows. The mean out-of-bag AUROC is the bias-corrected estimate; the in-bag minus
  out-of-bag AUROC of each resample's choice is its optimism. It costs no training, so it
  covers the fine-tuned network, whose nested CV would need ``folds x inner folds`` trainings.
* :func:`nested_cv`: nested CV of the frozen-feature candidates and their ensembles: in each
  outer fold of train+val, the whole selection (inner CV of every configuration, the rule,
  ensembles, recalibration) runs on the outer fold's training rows, and the chosen model,
  refitted there, scores the outer fold's rows. Their pooled AUROC is the honest estimate of the
  procedure; the winner's CV AUROC minus it is the optimism, with a paired patient-bootstrap CI.

The two differ in what they cover (BBC-CV: every candidate, but the member choice of the
ensembles and the recalibration are held fixed; nested CV: only frozen-feature candidates, but
everything re-run) and in variance (nested CV refits on less data, so it is slightly
pessimistic; BBC-CV's in-bag resamples repeat patients).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxr_triage.config import CompareParams, WinnerRule
from cxr_triage.data.folds import dev_folds
from cxr_triage.evaluation.metrics import _auroc_weighted, _check_groups, _patient_weights, auroc
from cxr_triage.evaluation.selection import combine_members, select_candidates

__all__ = ["OptimismEstimate", "bbc_cv", "nested_cv", "nested_cv_not_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimismEstimate:
    """An honest estimate of the selection procedure and the optimism of the apparent one.

    Attributes:
        method: ``bbc_cv`` or ``nested_cv``.
        apparent: the winner's CV AUROC as the comparison reports it.
        corrected: the estimate of the procedure's AUROC on new patients.
        corrected_ci_low: lower bound of its 95% interval.
        corrected_ci_high: upper bound.
        optimism: how much ``apparent`` overstates it (positive = optimistic).
        optimism_ci_low: lower bound of the optimism's 95% interval.
        optimism_ci_high: upper bound.
        n: resamples (BBC-CV) or outer folds (nested CV).
        chosen: how often each candidate was chosen (resamples or outer folds).
    """

    method: str
    apparent: float
    corrected: float
    corrected_ci_low: float
    corrected_ci_high: float
    optimism: float
    optimism_ci_low: float
    optimism_ci_high: float
    n: int
    chosen: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        return asdict(self)


def _column_aurocs(
    scores: np.ndarray, y: np.ndarray, inbag: np.ndarray, oob: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s = np.atleast_2d(scores)
    with np.errstate(invalid="ignore"):
        a = np.nanmean(np.stack([_auroc_weighted(y, r, inbag) for r in s]), axis=0)
        b = np.nanmean(np.stack([_auroc_weighted(y, r, oob) for r in s]), axis=0)
    return a, b


def bbc_cv(
    columns: Mapping[str, np.ndarray],
    family_of: Mapping[str, str],
    y_true: np.ndarray,
    groups: np.ndarray,
    *,
    table: Any,
    rule: WinnerRule,
    apparent: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> OptimismEstimate:
    """Bootstrap bias-corrected CV of the selection (see the module docstring).

    Args:
        columns: every selectable out-of-fold score column ``(repeats, n)``: each zoo
            configuration, the fine-tuned network, each ensemble (never the baseline).
        family_of: column -> candidate name (a configuration's zoo candidate; else itself).
        y_true: 0/1 labels.
        groups: patient id per row.
        table: the comparison table (``candidate``, the rule's columns and the standard
            errors): the rule's band and tie-breaker values are taken from it (full-data
            standard errors: re-estimating them per resample would need a nested bootstrap).
        rule: the winner rule (its primary must be an AUROC column).
        apparent: the winner's reported CV AUROC.
        n_boot: patient resamples.
        seed: resampling seed.

    Returns:
        The estimate; ``chosen`` counts each resample's winning candidate.
    """
    y = np.asarray(y_true, dtype=np.float64)
    codes = _check_groups(groups, y.size)
    counts = _patient_weights(np.random.default_rng(seed + 99), codes, n_boot)
    inbag_w, oob_w = counts, (counts == 0).astype(float)
    names = list(columns)
    inbag = np.empty((n_boot, len(names)))
    oob = np.empty((n_boot, len(names)))
    for j, name in enumerate(names):
        inbag[:, j], oob[:, j] = _column_aurocs(columns[name], y, inbag_w, oob_w)
    families = sorted({family_of[n] for n in names})
    members = {f: [j for j, n in enumerate(names) if family_of[n] == f] for f in families}
    by_name = table.set_index("candidate")

    def band_of(f: str, top: str) -> float:
        if rule.rule == "paired_se":
            return rule.se_multiplier * float(by_name.loc[f, f"{rule.primary}_gap_se"])
        if rule.rule == "one_se":
            return rule.se_multiplier * float(by_name.loc[top, f"{rule.primary}_se"])
        return rule.tie_tolerance

    sign = 1.0 if rule.tie_breaker_higher_is_better else -1.0
    breaker = {f: sign * float(by_name.loc[f, rule.tie_breaker]) for f in families}
    chosen_columns = np.empty(n_boot, dtype=np.int64)
    chosen: dict[str, int] = {}
    for b in range(n_boot):
        rep = {
            f: max(members[f], key=lambda j: (np.nan_to_num(inbag[b, j], nan=-1), -j))
            for f in families
        }
        value = {f: np.nan_to_num(inbag[b, rep[f]], nan=-1.0) for f in families}
        top = max(families, key=lambda f: (value[f], f))
        tied = [f for f in families if value[f] >= value[top] - band_of(f, top) - 1e-12]
        pick = max(tied, key=lambda f: (breaker[f], value[f], f))
        chosen_columns[b] = rep[pick]
        chosen[pick] = chosen.get(pick, 0) + 1
    rows = np.arange(n_boot)
    perf = oob[rows, chosen_columns]
    optimism = inbag[rows, chosen_columns] - perf
    perf, optimism = perf[np.isfinite(perf)], optimism[np.isfinite(optimism)]
    return OptimismEstimate(
        method="bbc_cv",
        apparent=float(apparent),
        corrected=float(np.mean(perf)),
        corrected_ci_low=float(np.percentile(perf, 2.5)),
        corrected_ci_high=float(np.percentile(perf, 97.5)),
        optimism=float(np.mean(optimism)),
        optimism_ci_low=float(np.percentile(optimism, 2.5)),
        optimism_ci_high=float(np.percentile(optimism, 97.5)),
        n=int(perf.size),
        chosen=dict(sorted(chosen.items())),
    )


# (X_fit, y_fit, groups_fit, inner_folds) -> per configuration out-of-fold scores (R, n_fit)
CrossValidate = Callable[..., Mapping[str, np.ndarray]]
# (configuration name, X_fit, y_fit, groups_fit, X_score) -> probabilities of the score rows
FitPredict = Callable[[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def nested_cv(
    X: np.ndarray,
    y_true: np.ndarray,
    groups: np.ndarray,
    *,
    family_of: Mapping[str, str],
    cross_validate: CrossValidate,
    fit_predict: FitPredict,
    params: CompareParams,
    recalibration: str,
    apparent_scores: np.ndarray,
    seed: int = 0,
    n_boot_inner: int = 200,
) -> tuple[OptimismEstimate, list[dict[str, Any]]]:
    """Nested CV of the frozen-feature selection (see the module docstring).

    Args:
        X: development embeddings ``(n, D)``.
        y_true: 0/1 labels.
        groups: patient id per row.
        family_of: zoo configuration -> candidate.
        cross_validate: ``(X, y, groups, folds) -> {configuration: (1, m) scores}``.
        fit_predict: ``(configuration, X_fit, y_fit, groups_fit, X_score) -> probabilities``.
        params: the ``compare`` section (outer folds = ``cv_folds``, repeat 0's assignment;
            ``nested_inner_folds``; the rule; ensembles).
        recalibration: calibrator of the zoo candidates and ensembles.
        apparent_scores: out-of-fold scores ``(R, n)`` of the frozen-feature winner of the
            full (non-nested) selection; its CV AUROC is the apparent figure.
        seed: the run's seed.
        n_boot_inner: bootstrap resamples of each inner selection.

    Returns:
        The estimate, and one record per outer fold (chosen candidate, inner and outer AUROC).
    """
    y = np.asarray(y_true)
    groups = np.asarray(groups)
    outer = dev_folds(y, groups, n_folds=params.cv_folds, repeats=1, seed=seed)
    nested = np.full(y.size, np.nan)
    records: list[dict[str, Any]] = []
    chosen: dict[str, int] = {}
    for fold in outer:
        fit, score = fold.fit, fold.score
        inner = dev_folds(
            y[fit], groups[fit], n_folds=params.nested_inner_folds, repeats=1, seed=seed + 1
        )
        config_scores = cross_validate(X[fit], y[fit], groups[fit], inner)
        selection = select_candidates(
            config_scores,
            family_of,
            {},
            y[fit],
            groups[fit],
            params,
            recalibration=dict.fromkeys(set(family_of.values()), recalibration),
            seed=seed,
            n_boot=n_boot_inner,
        )
        winner = selection.winner.candidate
        calibrators = selection.comparison.calibrators
        members = selection.ensembles.get(winner, (winner,))
        parts = []
        for member in members:
            raw = fit_predict(
                selection.representatives[member], X[fit], y[fit], groups[fit], X[score]
            )
            parts.append(calibrators[member].transform(raw))
        combined = combine_members(parts) if winner in selection.ensembles else parts[0]
        if winner in selection.ensembles:
            combined = calibrators[winner].transform(combined)
        nested[score] = combined
        chosen[winner] = chosen.get(winner, 0) + 1
        ok = np.unique(y[score]).size == 2
        records.append(
            {
                "fold": fold.fold,
                "winner": winner,
                "inner_cv_auroc": selection.winner.primary_value,
                "outer_auroc": float(auroc(y[score], combined)) if ok else float("nan"),
                "n_score": int(score.size),
            }
        )
        log.info(
            "nested CV fold %d: %s, outer AUROC %.3f",
            fold.fold,
            winner,
            records[-1]["outer_auroc"],
        )
    yf = y.astype(np.float64)
    codes = _check_groups(groups, y.size)
    weights = _patient_weights(np.random.default_rng(seed + 7), codes, params.n_boot)
    boot_nested = _auroc_weighted(yf, nested, weights)
    apparent_rows = np.atleast_2d(apparent_scores)
    boot_apparent = np.mean([_auroc_weighted(yf, r, weights) for r in apparent_rows], axis=0)
    apparent = float(np.mean([auroc(y, r) for r in apparent_rows]))
    corrected = float(auroc(y, nested))
    diff = boot_apparent - boot_nested
    return (
        OptimismEstimate(
            method="nested_cv",
            apparent=apparent,
            corrected=corrected,
            corrected_ci_low=float(np.nanpercentile(boot_nested, 2.5)),
            corrected_ci_high=float(np.nanpercentile(boot_nested, 97.5)),
            optimism=apparent - corrected,
            optimism_ci_low=float(np.nanpercentile(diff, 2.5)),
            optimism_ci_high=float(np.nanpercentile(diff, 97.5)),
            n=len(outer),
            chosen=dict(sorted(chosen.items())),
        ),
        records,
    )


def nested_cv_not_run(reason: str) -> dict[str, str]:
    """The record written when nested CV is switched off or impossible."""
    return {"method": "nested_cv", "skipped": reason}
