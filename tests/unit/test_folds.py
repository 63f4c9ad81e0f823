"""Cross-validation folds of train+val, and nested CV: no fold ever sees its own patients."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_triage.config import CompareParams, EnsembleParams
from cxr_triage.data.folds import (
    assert_fold_disjoint,
    dev_folds,
    inner_holdout,
    nested_folds,
)
from cxr_triage.errors import ConfigError, LeakageError
from cxr_triage.evaluation.optimism import nested_cv


def _patients(n_patients: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """1-4 images per patient, label per patient."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, n_patients)
    groups = np.repeat([f"p{i:03d}" for i in range(n_patients)], counts)
    y = np.repeat(rng.integers(0, 2, n_patients), counts)
    return y, groups


def test_dev_folds_partition_rows_and_keep_patients_on_one_side() -> None:
    y, groups = _patients()
    folds = dev_folds(y, groups, n_folds=5, repeats=3, seed=4)
    assert len(folds) == 15
    for repeat in range(3):
        scored = np.concatenate([f.score for f in folds if f.repeat == repeat])
        assert np.array_equal(np.sort(scored), np.arange(y.size))  # each row once per repeat
    for fold in folds:
        assert not set(groups[fold.fit]) & set(groups[fold.score])
        assert np.unique(y[fold.score]).size == 2
    # Repeats draw different assignments; the same seed draws the same ones.
    assert not np.array_equal(folds[0].score, folds[5].score)
    again = dev_folds(y, groups, n_folds=5, repeats=3, seed=4)
    assert all(np.array_equal(a.score, b.score) for a, b in zip(folds, again, strict=True))


def test_nested_folds_stay_inside_the_outer_training_rows() -> None:
    y, groups = _patients()
    for outer in dev_folds(y, groups, n_folds=4, repeats=1, seed=1):
        inner = nested_folds(y, groups, outer.fit, n_folds=3, seed=2)
        outer_patients = set(groups[outer.score])
        for fold in inner:
            assert set(fold.fit) | set(fold.score) <= set(outer.fit)
            assert not outer_patients & (set(groups[fold.fit]) | set(groups[fold.score]))
            assert not set(groups[fold.fit]) & set(groups[fold.score])


def test_inner_holdout_splits_patients() -> None:
    y, groups = _patients()
    rows = np.arange(y.size)[: y.size // 2]
    fit, held = inner_holdout(y, groups, rows, fraction=0.2, seed=0)
    assert np.array_equal(np.sort(np.concatenate([fit, held])), rows)
    assert not set(groups[fit]) & set(groups[held])
    assert 0 < held.size < rows.size


def test_a_shared_patient_is_refused() -> None:
    groups = np.array(["a", "a", "b", "c"])
    with pytest.raises(LeakageError, match="1 patient"):
        assert_fold_disjoint(groups, np.array([0, 2]), np.array([1, 3]))
    with pytest.raises(ConfigError, match="fewer than 5 folds"):
        dev_folds(
            np.array([0, 1, 0, 1]), np.array(["a", "b", "c", "d"]), n_folds=5, repeats=1, seed=0
        )


def test_nested_cv_never_fits_or_selects_on_the_outer_fold_it_scores() -> None:
    """The real nested CV, with fitting functions that record which rows they were given."""
    y, groups = _patients(80, seed=3)
    rng = np.random.default_rng(0)
    # Column 0 is the row number (to see which rows a function gets); column 1 a weak signal.
    X = np.column_stack([np.arange(y.size), y + rng.normal(0, 1.0, y.size)]).astype(float)
    seen_by_selection: list[set[int]] = []
    seen_by_fit: list[set[int]] = []

    def cross_validate(Xf, yf, gf, folds):
        seen_by_selection.append(set(Xf[:, 0].astype(int)))
        for fold in folds:
            assert not set(gf[fold.fit]) & set(gf[fold.score])
        out = {}
        for name, noise in (("logreg(C=1)", 0.0), ("knn(k=10)", 0.5)):
            scores = np.empty(yf.size)
            for fold in folds:
                scores[fold.score] = 1 / (1 + np.exp(-(Xf[fold.score, 1] + noise)))
            out[name] = scores[None]
        return out

    def fit_predict(name, Xf, yf, gf, Xs):
        seen_by_fit.append(set(Xf[:, 0].astype(int)))
        assert not set(Xf[:, 0].astype(int)) & set(Xs[:, 0].astype(int))
        return 1 / (1 + np.exp(-Xs[:, 1]))

    params = CompareParams(
        cv_folds=4,
        nested_inner_folds=3,
        n_boot=50,
        calibration_folds=2,
        ensemble=EnsembleParams(sizes=[2]),
    )
    estimate, records = nested_cv(
        X,
        y,
        groups,
        family_of={"logreg(C=1)": "logreg", "knn(k=10)": "knn"},
        cross_validate=cross_validate,
        fit_predict=fit_predict,
        params=params,
        recalibration="platt",
        apparent_scores=(1 / (1 + np.exp(-X[:, 1])))[None],
        seed=5,
    )
    outer = dev_folds(y, groups, n_folds=4, repeats=1, seed=5)
    assert len(records) == len(outer) == len(seen_by_selection)
    for fold, rows in zip(outer, seen_by_selection, strict=True):
        assert rows == set(fold.fit)  # the selection saw exactly the outer training rows
        assert not set(groups[list(rows)]) & set(groups[fold.score])
    assert all(rows <= set(range(y.size)) for rows in seen_by_fit)
    assert 0.5 < estimate.corrected <= 1.0
    assert estimate.n == 4
