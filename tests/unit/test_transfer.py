"""Tests of cxr_triage.models.transfer."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.model_selection import KFold, cross_val_score
from sklearn.pipeline import Pipeline

from cxr_triage.errors import ConfigError, DataError
from cxr_triage.evaluation.metrics import auroc
from cxr_triage.models.transfer import (
    ZOO_NAMES,
    FittedCandidate,
    fit_candidate,
    fit_zoo,
    load_candidate,
    patient_cv_splits,
    predict_scores,
    save_candidate,
)
from helpers.embeddings import Data


def test_every_candidate_beats_chance_with_probabilities(
    fitted_zoo: dict[str, FittedCandidate], embedding_held_out: Data
) -> None:
    X_test, y_test, _ = embedding_held_out
    assert list(fitted_zoo) == list(ZOO_NAMES)
    for name, candidate in fitted_zoo.items():
        scores = predict_scores(candidate, X_test)
        assert scores.shape == (len(y_test),)
        assert np.all((scores >= 0) & (scores <= 1)), name
        assert auroc(y_test, scores) > 0.8, name
        assert candidate.cv_auroc > 0.8, name
        assert candidate.fit_seconds > 0
        assert candidate.best_params, name


def test_patient_cv_splits_keep_patients_in_one_fold() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), rng.integers(1, 6, size=60))
    y = (groups % 3 == 0).astype(int)
    splits = patient_cv_splits(y, groups, cv_folds=3, seed=0)
    assert len(splits) == 3
    seen = np.zeros(groups.size, dtype=int)
    for train_index, test_index in splits:
        assert not set(groups[train_index]) & set(groups[test_index])
        assert 0 < y[test_index].mean() < 1
        seen[test_index] += 1
    assert np.all(seen == 1)


def test_cv_auroc_does_not_leak_within_patient_similarity() -> None:
    # Labels are random per patient and images of a patient are near-duplicates: there is nothing
    # to learn, but row-level CV lets k-NN find the same patient's other images.
    rng = np.random.default_rng(0)
    n_patients, images = 100, 8
    groups = np.repeat(np.arange(n_patients), images)
    centres = rng.normal(0, 1, size=(n_patients, 8))
    X = centres[groups] + rng.normal(0, 0.05, size=(groups.size, 8))
    y = rng.integers(0, 2, size=n_patients)[groups]
    candidate = fit_candidate("knn", X, y, groups, cv_folds=3, seed=0)
    assert candidate.cv_auroc < 0.7
    # Control: the same model with row-level folds looks far better than chance.
    model = clone(candidate.estimator).set_params(model__n_neighbors=10)
    leaky = cross_val_score(
        model, X, y, cv=KFold(3, shuffle=True, random_state=0), scoring="roc_auc"
    )
    assert leaky.mean() > 0.85


def test_save_load_round_trip_gives_identical_predictions(
    fitted_zoo: dict[str, FittedCandidate], embedding_train: Data, tmp_path: Path
) -> None:
    X, _, _ = embedding_train
    for name, candidate in fitted_zoo.items():
        path = save_candidate(candidate, tmp_path / f"{name}.skops")
        loaded = load_candidate(path)
        assert loaded.name == name
        assert loaded.best_params == candidate.best_params
        assert loaded.cv_auroc == candidate.cv_auroc
        np.testing.assert_array_equal(predict_scores(loaded, X), predict_scores(candidate, X))


def test_the_same_model_saves_to_the_same_bytes(
    fitted_zoo: dict[str, FittedCandidate], embedding_train: Data, tmp_path: Path
) -> None:
    """skops names objects by id() and stamps the time: a rerun (other objects, later) must
    still write the same file, or every DVC hash and package tag after it changes."""
    X, _, _ = embedding_train
    for name, candidate in fitted_zoo.items():
        first = save_candidate(candidate, tmp_path / f"{name}-1.skops").read_bytes()
        rerun = save_candidate(copy.deepcopy(candidate), tmp_path / f"{name}-2.skops")
        assert rerun.read_bytes() == first, name
        with zipfile.ZipFile(rerun) as archive:
            assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        np.testing.assert_array_equal(
            predict_scores(load_candidate(rerun), X), predict_scores(candidate, X)
        )


class _Untrusted(TransformerMixin, BaseEstimator):
    """Stands for any class an attacker could smuggle into a model file."""

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> _Untrusted:
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X


def test_load_candidate_refuses_untrusted_types(
    fitted_zoo: dict[str, FittedCandidate], embedding_train: Data, tmp_path: Path
) -> None:
    X, y, _ = embedding_train
    logreg = fitted_zoo["logreg"]
    tampered = Pipeline([("evil", _Untrusted()), ("model", logreg.estimator)])
    payload = {
        "format": "cxr_triage.transfer.candidate/1",
        "name": "logreg",
        "best_params": {},
        "cv_auroc": 0.9,
        "fit_seconds": 1.0,
        "n_train": 1,
        "n_tune": 1,
        "estimator": tampered.fit(X, y),
    }
    path = tmp_path / "tampered.skops"
    sio.dump(payload, path)
    with pytest.raises(DataError, match="_Untrusted"):
        load_candidate(path)


def test_load_candidate_refuses_other_files(tmp_path: Path) -> None:
    not_zip = tmp_path / "model.skops"
    not_zip.write_bytes(b"\x80\x04 pickle-like bytes")
    with pytest.raises(DataError, match="not a readable skops file"):
        load_candidate(not_zip)
    other = tmp_path / "other.skops"
    sio.dump({"format": "something-else"}, other)
    with pytest.raises(DataError, match="not a cxr_triage transfer candidate"):
        load_candidate(other)
    with pytest.raises(DataError, match="does not exist"):
        load_candidate(tmp_path / "missing.skops")


def test_fit_zoo_rejects_bad_arguments(embedding_train: Data) -> None:
    X, y, groups = embedding_train
    with pytest.raises(ConfigError, match="names"):
        fit_zoo(X, y, groups, names=("logreg", "xgboost"))
    with pytest.raises(ConfigError, match="one label and one patient_id per row"):
        fit_zoo(X, y[:-1], groups, names=("logreg",))
    with pytest.raises(ConfigError, match="cv_folds"):
        fit_zoo(X, y, groups % 2, names=("logreg",), cv_folds=3)


def test_predict_scores_checks_embedding_width(fitted_zoo: dict[str, FittedCandidate]) -> None:
    with pytest.raises(ConfigError, match="same backbone"):
        predict_scores(fitted_zoo["logreg"], np.zeros((2, 5)))


# --- the comparison protocol: configurations scored out of fold ------------------------------


def test_metadata_baseline_and_leave_one_site_out(embedding_train: Data) -> None:
    import pandas as pd

    from cxr_triage.data.folds import dev_folds
    from cxr_triage.models.transfer import (
        cross_validate_metadata,
        leave_one_site_out,
        zoo_configs,
    )

    X, y, groups = embedding_train
    folds = dev_folds(y, groups, n_folds=3, repeats=1, seed=0)
    # A view that tracks the label (a shortcut) is what the baseline must find.
    rng = np.random.default_rng(0)
    view = np.where(rng.random(y.size) < 0.8, np.where(y == 1, "AP", "PA"), "PA")
    meta = pd.DataFrame({"view_position": view, "sex": "F", "site": "a"})
    baseline = cross_validate_metadata(meta, y, folds, seed=0)
    assert baseline.names == ("metadata_only",)
    assert auroc(y, baseline.scores[0, :, 0]) > 0.75
    sites = np.where(groups % 2 == 0, "site_a", "site_b")
    config = zoo_configs(["logreg"], X.shape[1], 100, seed=0)[1]
    table = leave_one_site_out(config, X, y, groups, sites, seed=0)
    assert list(table["site"]) == ["site_a", "site_b"]
    assert table["n"].sum() == y.size and (table["auroc"] > 0.8).all()


def test_no_configuration_depends_on_numpy_global_random_state(embedding_train: Data) -> None:
    # A joblib worker's global numpy state depends on which folds it ran before (and is seeded
    # from the OS): a fit that reads it makes out-of-fold scores and dvc.lock hashes differ
    # between runs. liblinear's dual solver did, through LinearSVC without random_state.
    from cxr_triage.models.transfer import fit_config, positive_proba, zoo_configs

    X, y, groups = embedding_train
    for config in zoo_configs(list(ZOO_NAMES), X.shape[1], y.size // 2, seed=0):
        scores = []
        for global_seed in (1, 2):
            np.random.seed(global_seed)
            scores.append(positive_proba(fit_config(config, X, y, groups, seed=0), X))
        np.testing.assert_array_equal(scores[0], scores[1], err_msg=config.name)
