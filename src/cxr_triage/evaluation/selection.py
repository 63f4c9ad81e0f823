"""The whole selection procedure, as one function that the ``compare`` stage runs on every
candidate and nested cross-validation re-runs inside each outer fold.

1. Each zoo candidate is represented by its best configuration (hyperparameter setting) by
   ``cv_auroc`` (:func:`family_representatives`).
2. The candidates are measured (:func:`~cxr_triage.evaluation.compare.summarise_candidates`).
3. Ensembles: for each size ``k`` in ``compare.ensemble.sizes``, the calibrated average of the
   ``k`` eligible single candidates with the best ``cv_auroc``: the mean of the members'
   cross-fitted recalibrated out-of-fold probabilities, itself recalibrated (Platt by default).
   Members are chosen on the same out-of-fold scores the ensemble is then judged on, a small
   optimism that BBC-CV and the nested CV (:mod:`~cxr_triage.evaluation.optimism`) include.
4. Everything is measured again with the ensembles, and the rule picks the winner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cxr_triage.config import CompareParams
from cxr_triage.evaluation.compare import (
    Comparison,
    Winner,
    choose_winner,
    complexity_of,
    summarise_candidates,
)
from cxr_triage.evaluation.metrics import auroc

__all__ = [
    "ENSEMBLE_PREFIX",
    "Selection",
    "combine_members",
    "family_representatives",
    "select_candidates",
]

ENSEMBLE_PREFIX = "ensemble_top"


def family_representatives(
    config_scores: Mapping[str, np.ndarray], family_of: Mapping[str, str], y_true: np.ndarray
) -> dict[str, str]:
    """Per candidate family, its configuration with the best mean out-of-fold AUROC.

    Args:
        config_scores: per configuration, out-of-fold probabilities ``(repeats, n)``.
        family_of: configuration -> candidate name.
        y_true: 0/1 labels.

    Returns:
        candidate -> chosen configuration (ties go to the configuration listed first).
    """
    best: dict[str, tuple[float, str]] = {}
    for name, scores in config_scores.items():
        value = float(np.mean([auroc(y_true, s) for s in np.atleast_2d(scores)]))
        family = family_of[name]
        if family not in best or value > best[family][0]:
            best[family] = (value, name)
    return {family: name for family, (_, name) in best.items()}


def combine_members(calibrated: Sequence[np.ndarray]) -> np.ndarray:
    """The calibrated average: the mean of the members' recalibrated probabilities."""
    return np.mean(np.stack([np.asarray(c, dtype=np.float64) for c in calibrated]), axis=0)


@dataclass(frozen=True)
class Selection:
    """Outcome of :func:`select_candidates`.

    Attributes:
        comparison: every candidate, ensembles included.
        winner: the rule's choice.
        representatives: zoo candidate -> its configuration.
        ensembles: ensemble name -> its members (candidate names), best first.
        scores: per candidate (ensembles included), the out-of-fold scores it was judged on,
            before its own recalibration.
    """

    comparison: Comparison
    winner: Winner
    representatives: dict[str, str]
    ensembles: dict[str, tuple[str, ...]]
    scores: dict[str, np.ndarray]


def select_candidates(
    config_scores: Mapping[str, np.ndarray],
    family_of: Mapping[str, str],
    other_scores: Mapping[str, np.ndarray],
    y_true: np.ndarray,
    groups: np.ndarray,
    params: CompareParams,
    *,
    recalibration: Mapping[str, str],
    ineligible: Sequence[str] = (),
    no_ensemble: Sequence[str] = (),
    seen: np.ndarray | None = None,
    seed: int = 0,
    n_boot: int | None = None,
) -> Selection:
    """Run the whole selection procedure on out-of-fold scores.

    Args:
        config_scores: per zoo configuration, out-of-fold probabilities ``(repeats, n)``.
        family_of: zoo configuration -> candidate name.
        other_scores: candidates without configurations (the fine-tuned network, the
            metadata baseline), out-of-fold probabilities ``(repeats, n)``.
        y_true: 0/1 labels.
        groups: patient id per row.
        params: the ``compare`` section (folds, bootstrap, rule, ensembles).
        recalibration: calibrator per candidate; ensembles use ``params.recalibrate_transfer``.
        ineligible: candidates that are measured but may not win or join an ensemble.
        no_ensemble: candidates that may win but not join an ensemble.
        seen: per row, whether the backbone saw its labels (see ``summarise_candidates``).
        seed: bootstrap and calibration seed.
        n_boot: bootstrap resamples (default ``params.n_boot``).

    Returns:
        The comparison, the winner, the representatives and the ensembles.
    """
    representatives = family_representatives(config_scores, family_of, y_true)
    scores = {family: config_scores[name] for family, name in representatives.items()}
    scores.update(other_scores)
    eligible = {name: name not in ineligible for name in scores}
    settings = {
        "calibration_folds": params.calibration_folds,
        "n_boot": params.n_boot if n_boot is None else n_boot,
        "n_bins": params.n_bins,
        "seed": seed,
        "seen": seen,
    }
    base = summarise_candidates(
        scores, y_true, groups, recalibration, eligible=eligible, **settings
    )
    ranked = [
        name for name in base.table["candidate"] if eligible[name] and name not in no_ensemble
    ]
    ensembles: dict[str, tuple[str, ...]] = {}
    for size in sorted(set(params.ensemble.sizes)):
        if len(ranked) < size:
            continue
        members = tuple(ranked[:size])
        repeats = min(len(base.calibrated[m]) for m in members)
        name = f"{ENSEMBLE_PREFIX}{size}"
        ensembles[name] = members
        scores[name] = combine_members([base.calibrated[m][:repeats] for m in members])
        eligible[name] = True
    if not ensembles:
        comparison = base
    else:
        recal = {**recalibration, **dict.fromkeys(ensembles, params.recalibrate_transfer)}
        complexity = {n: complexity_of(n, len(ensembles.get(n, ()))) for n in scores}
        comparison = summarise_candidates(
            scores, y_true, groups, recal, eligible=eligible, complexity=complexity, **settings
        )
    winner = choose_winner(comparison.table, params.winner)
    return Selection(comparison, winner, representatives, ensembles, scores)
