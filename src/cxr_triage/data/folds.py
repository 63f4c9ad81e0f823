"""Repeated patient-grouped cross-validation folds over the development set (train + val).

Every candidate of the comparison is scored on the same folds, so that their out-of-fold
predictions are paired row by row. Repeat ``r`` draws its fold assignment with the seed
``seed + 1000 * r``; within a repeat, every patient's images sit in exactly one test fold, and
the folds are stratified by label (``StratifiedGroupKFold``). The test split never enters.

:func:`inner_holdout` carves a patient-disjoint early-stopping set out of a fold's training rows,
and :func:`nested_folds` the inner folds of nested CV; both are checked like the outer folds
(:func:`assert_fold_disjoint`): a fold that shares a patient between its fitting and its scoring
rows raises :class:`~cxr_triage.errors.LeakageError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from cxr_triage.errors import ConfigError, LeakageError

__all__ = [
    "Fold",
    "assert_fold_disjoint",
    "dev_folds",
    "inner_holdout",
    "nested_folds",
    "patient_codes",
]

_REPEAT_SEED_STEP = 1000


@dataclass(frozen=True)
class Fold:
    """One fold of one repeat: ``fit`` rows train, ``score`` rows are predicted (row indices)."""

    repeat: int
    fold: int
    fit: np.ndarray
    score: np.ndarray


def patient_codes(groups: np.ndarray) -> np.ndarray:
    """Integer code per row of the patient ids ``groups``."""
    codes, _ = pd.factorize(pd.Series(np.asarray(groups)), use_na_sentinel=False)
    return codes.astype(np.int64)


def assert_fold_disjoint(groups: np.ndarray, fit: np.ndarray, score: np.ndarray) -> None:
    """Fail when a patient has rows on both sides of a fold.

    Raises:
        LeakageError: naming how many patients are shared.
    """
    groups = np.asarray(groups)
    shared = np.intersect1d(groups[fit], groups[score])
    if shared.size:
        raise LeakageError(
            f"{shared.size} patient(s) are in both the fitting and the scoring rows of a fold "
            f"(e.g. {shared[0]}); folds must be patient-disjoint"
        )


def _check(y: np.ndarray, groups: np.ndarray, n_folds: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or np.asarray(groups).shape != y.shape:
        raise ConfigError("y and groups must be 1-D with one value per row")
    if n_folds < 2:
        raise ConfigError(f"cross-validation needs >= 2 folds, got {n_folds}")
    codes = patient_codes(groups)
    for label in (0, 1):
        n_patients = np.unique(codes[y == label]).size
        if n_patients < n_folds:
            raise ConfigError(
                f"only {n_patients} patients have label {label}, fewer than {n_folds} folds; "
                "lower compare.cv_folds or add data"
            )
    return codes


def _split(y: np.ndarray, codes: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [score for _, score in splitter.split(np.zeros(y.size), y, codes)]


def dev_folds(
    y: np.ndarray, groups: np.ndarray, *, n_folds: int, repeats: int, seed: int
) -> list[Fold]:
    """``repeats`` x ``n_folds`` patient-grouped, label-stratified folds.

    Args:
        y: 0/1 labels of the development rows.
        groups: patient id of each row.
        n_folds: folds per repeat.
        repeats: number of fold assignments.
        seed: the run's seed; repeat ``r`` uses ``seed + 1000 * r``.

    Returns:
        Folds in (repeat, fold) order; within a repeat the ``score`` sets partition the rows.

    Raises:
        ConfigError: too few patients of a class for ``n_folds``.
        LeakageError: a fold shares a patient (cannot happen with a correct splitter).
    """
    y = np.asarray(y)
    codes = _check(y, groups, n_folds)
    rows = np.arange(y.size)
    folds = []
    for repeat in range(repeats):
        for k, score in enumerate(_split(y, codes, n_folds, seed + _REPEAT_SEED_STEP * repeat)):
            fit = np.setdiff1d(rows, score)
            assert_fold_disjoint(codes, fit, score)
            folds.append(Fold(repeat, k, fit, np.sort(score)))
    return folds


def nested_folds(
    y: np.ndarray, groups: np.ndarray, rows: np.ndarray, *, n_folds: int, seed: int
) -> list[Fold]:
    """Inner folds over ``rows`` (an outer fold's fitting rows), as indices into the full arrays.

    Raises:
        ConfigError: too few patients of a class in ``rows``.
        LeakageError: a fold shares a patient.
    """
    rows = np.asarray(rows)
    inner = dev_folds(
        np.asarray(y)[rows], np.asarray(groups)[rows], n_folds=n_folds, repeats=1, seed=seed
    )
    return [Fold(f.repeat, f.fold, rows[f.fit], rows[f.score]) for f in inner]


def inner_holdout(
    y: np.ndarray, groups: np.ndarray, rows: np.ndarray, *, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` by patient into (fit, early-stopping) rows, ``fraction`` held out.

    Patients are stratified by whether any of their images is abnormal when both classes have
    at least two patients.

    Raises:
        ConfigError: fewer than two patients in ``rows``.
        LeakageError: the two parts share a patient.
    """
    rows = np.asarray(rows)
    codes = patient_codes(np.asarray(groups)[rows])
    abnormal = pd.Series(np.asarray(y)[rows]).groupby(codes).max()
    if len(abnormal) < 2:
        raise ConfigError("an early-stopping holdout needs at least two patients")
    n_held = min(len(abnormal) - 1, max(1, round(fraction * len(abnormal))))
    counts = abnormal.value_counts()
    stratify = abnormal.to_numpy() if len(counts) > 1 and counts.min() >= 2 else None
    _, held_patients = train_test_split(
        abnormal.index.to_numpy(), test_size=n_held, random_state=seed, stratify=stratify
    )
    held = np.isin(codes, held_patients)
    fit_rows, held_rows = rows[~held], rows[held]
    assert_fold_disjoint(np.asarray(groups), fit_rows, held_rows)
    return fit_rows, held_rows
