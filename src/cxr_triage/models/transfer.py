"""The classifier zoo on frozen embeddings: tuned by patient-grouped CV on train only.

Each candidate is a scikit-learn pipeline that yields probabilities of class 1 (abnormal):

* ``logreg``: standardise, L2 logistic regression; grid over ``C``.
* ``linear_svm``: standardise, ``LinearSVC``, Platt-scaled by ``CalibratedClassifierCV``
  on patient-grouped folds of train; grid over ``C``.
* ``rbf_svm``: standardise, ``Nystroem`` RBF features (400 landmarks), ``LinearSVC``, Platt; grid
  over ``gamma`` (0.5x, 1x, 2x sklearn's ``"scale"``, 1 / n_features on standardised data) and
  ``C``.
* ``random_forest``: standardise, PCA to 64, 100 trees on half-size bootstrap samples; grid over
  ``min_samples_leaf``.
* ``hist_gb``: standardise, PCA to 64, ``HistGradientBoostingClassifier`` with early stopping (at
  most 200 iterations); grid over ``learning_rate``.
* ``knn``: standardise, PCA to 64, k-NN (probability = share of abnormal neighbours); grid over
  ``n_neighbors``.
* ``mlp``: standardise, PCA to 128, one hidden layer of 128 units (Adam with early stopping from
  2000 rows, L-BFGS below); grid over ``alpha``.

Why these shortcuts: an exact ``SVC(kernel="rbf", probability=True)`` on 10k x 1024 embeddings
takes ~140 s on 2 cores by itself (its Platt step is an internal 5-fold CV of the whole SVC). The
Nystroem approximation plus a linear SVM fits in about a second and Platt-scales the same way.
Trees and k-NN work on 64 principal components because split search and distance computations
scale with the dimension, and on 1024 raw dimensions gradient boosting alone takes ~40 s.

Tuning: ``GridSearchCV`` with ``StratifiedGroupKFold`` by patient (``groups``) and
``scoring="roc_auc"``, on a patient subsample of train of at most ``tune_max_rows`` rows
(grids are small, and the ranking of a few hyperparameters is stable at that size); the best
parameters are then refitted on all of train. ``cv_auroc`` is the best mean CV AUROC of the
search. Candidates are fitted in parallel processes (joblib, ``n_jobs``). Gradient boosting's
and the MLP's early stopping hold out a random 10% of rows: that only picks the number of
iterations and never touches validation or test.

Persistence: :func:`save_candidate` writes a ``skops`` file (``skops.io``), and
:func:`load_candidate` refuses any type outside :data:`TRUSTED_TYPES` (the exact classes this
module builds) before anything is constructed. Unlike pickle/joblib, loading a skops file never
runs code from the file, so a tampered artifact fails with a :class:`DataError` instead of
executing. The candidate's metadata (name, best parameters, CV AUROC, fit time) is stored in the
same file.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, ParameterGrid
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from cxr_triage.config import ZOO_NAMES
from cxr_triage.data.folds import Fold, dev_folds
from cxr_triage.errors import ConfigError, DataError

__all__ = [
    "TRUSTED_TYPES",
    "ZOO_NAMES",
    "FittedCandidate",
    "OutOfFold",
    "ZooConfig",
    "cross_validate_configs",
    "cross_validate_metadata",
    "fit_config",
    "leave_one_site_out",
    "positive_proba",
    "refit_config",
    "zoo_configs",
    "fit_candidate",
    "fit_zoo",
    "load_candidate",
    "patient_cv_splits",
    "predict_scores",
    "save_candidate",
]

logger = logging.getLogger(__name__)

# Slowest first, so that parallel workers finish together.
_FIT_ORDER = ("random_forest", "hist_gb", "linear_svm", "rbf_svm", "mlp", "knn", "logreg")
_FORMAT = "cxr_triage.transfer.candidate/1"

# Every non-builtin type a saved candidate may contain; load_candidate refuses anything else.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.decomposition._pca.PCA",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn.kernel_approximation.Nystroem",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "numpy.float64",
    "numpy.int64",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.random.mtrand.RandomState",
    "builtins.slice",
)


@dataclass(frozen=True)
class FittedCandidate:
    """One fitted classifier of the zoo.

    Attributes:
        name: candidate name (one of :data:`ZOO_NAMES`).
        estimator: the fitted scikit-learn estimator (has ``predict_proba``).
        best_params: the tuned hyperparameters (pipeline step ``__`` names).
        cv_auroc: best mean AUROC of the patient-grouped CV search on train.
        fit_seconds: wall time of tuning plus the final fit.
        cpu_seconds: CPU time of the same (all threads of the fitting process).
        n_train: rows of the final fit.
        n_tune: rows used by the CV search.
    """

    name: str
    estimator: Any = field(repr=False)
    best_params: dict[str, Any]
    cv_auroc: float
    fit_seconds: float
    n_train: int = 0
    n_tune: int = 0
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class _Spec:
    """How one candidate is built and tuned."""

    pipeline: Pipeline
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]]
    platt: bool = False


def _spec(name: str, n_features: int, n_rows: int, seed: int) -> _Spec:
    """The pipeline and grid of candidate ``name``."""
    scaler = ("scale", StandardScaler())

    def pca(n_components: int) -> tuple[str, PCA]:
        # Never more components than the data has; randomized SVD is several times faster.
        k = max(1, min(n_components, n_features, n_rows - 1))
        return ("pca", PCA(n_components=k, svd_solver="randomized", random_state=seed))

    if name == "logreg":
        model = LogisticRegression(max_iter=1000)
        return _Spec(Pipeline([scaler, ("model", model)]), {"model__C": [0.01, 0.1, 1.0]})
    if name == "linear_svm":
        # liblinear's dual solver visits rows in a random order: without a seed it draws one
        # from numpy's global state, so a fold's result depended on which joblib worker ran it.
        model = LinearSVC(max_iter=2000, random_state=seed)
        # The dual solver is fastest for small C, the primal one for larger C (more rows than
        # dimensions); each C gets its faster solver, the solution is the same.
        grid = [
            {"model__C": [0.0001, 0.001], "model__dual": [True]},
            {"model__C": [0.01], "model__dual": [False]},
        ]
        return _Spec(Pipeline([scaler, ("model", model)]), grid, platt=True)
    if name == "rbf_svm":
        gamma = 1.0 / n_features
        # Fewer landmarks than a quarter of the rows make the features rank deficient and slow.
        landmarks = max(2, min(400, n_rows // 4))
        nystroem = Nystroem(kernel="rbf", n_components=landmarks, random_state=seed)
        model = LinearSVC(dual=False, max_iter=2000, random_state=seed)
        grid = {"rbf__gamma": [0.5 * gamma, gamma, 2.0 * gamma], "model__C": [0.01, 0.1]}
        return _Spec(Pipeline([scaler, ("rbf", nystroem), ("model", model)]), grid, platt=True)
    if name == "random_forest":
        model = RandomForestClassifier(
            n_estimators=100, max_samples=0.5, random_state=seed, n_jobs=1
        )
        grid = {"model__min_samples_leaf": [1, 5]}
        return _Spec(Pipeline([scaler, pca(64), ("model", model)]), grid)
    if name == "hist_gb":
        model = HistGradientBoostingClassifier(
            max_iter=200, early_stopping=True, n_iter_no_change=10, random_state=seed
        )
        grid = {"model__learning_rate": [0.05, 0.15]}
        return _Spec(Pipeline([scaler, pca(64), ("model", model)]), grid)
    if name == "knn":
        model = KNeighborsClassifier()
        # A neighbourhood can't outnumber a CV fold's training rows (small datasets).
        ks = [k for k in (10, 30, 100) if k < n_rows] or [max(1, n_rows // 2)]
        grid = {"model__n_neighbors": ks}
        return _Spec(Pipeline([scaler, pca(64), ("model", model)]), grid)
    if name == "mlp":
        large = n_rows >= 2000
        # On small train sets L-BFGS converges in a fraction of Adam's time, and a 10% stopping
        # set would be too noisy to stop on; Adam with early stopping scales to large ones.
        model = MLPClassifier(
            hidden_layer_sizes=(128,),
            solver="adam" if large else "lbfgs",
            early_stopping=large,
            max_iter=100 if large else 300,
            batch_size=256,
            random_state=seed,
        )
        grid = {"model__alpha": [1e-3, 1e-1]}
        return _Spec(Pipeline([scaler, pca(128), ("model", model)]), grid)
    raise ConfigError(f"unknown transfer candidate {name!r}; choose from {', '.join(ZOO_NAMES)}")


def _check_training_data(X: Any, y: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X_arr = np.asarray(X)
    y_arr = np.asarray(y)
    groups_arr = np.asarray(groups)
    if X_arr.ndim != 2:
        raise ConfigError(f"X must be a 2-D embeddings matrix, got shape {X_arr.shape}")
    if not (y_arr.shape == (X_arr.shape[0],) and groups_arr.shape == (X_arr.shape[0],)):
        raise ConfigError(
            f"X has {X_arr.shape[0]} rows but y has shape {y_arr.shape} and groups "
            f"{groups_arr.shape}; pass one label and one patient_id per row"
        )
    if not np.isin(y_arr, (0, 1)).all() or np.unique(y_arr).size != 2:
        raise ConfigError("y must hold both labels 0 (normal) and 1 (abnormal) and nothing else")
    if not np.isfinite(X_arr).all():
        raise ConfigError("X contains NaN or infinite values; re-run the embed stage")
    return X_arr, y_arr.astype(np.int64), groups_arr


def patient_cv_splits(
    y: np.ndarray, groups: np.ndarray, cv_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds in which every patient's rows sit in exactly one test fold.

    Args:
        y: 0/1 labels.
        groups: patient id of each row.
        cv_folds: number of folds.
        seed: shuffling seed.

    Returns:
        ``(train_index, test_index)`` pairs.

    Raises:
        ConfigError: when there are fewer patients of a class than folds.
    """
    return [(f.fit, f.score) for f in dev_folds(y, groups, n_folds=cv_folds, repeats=1, seed=seed)]


def _tuning_rows(groups: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Row indices of a random subset of whole patients with about ``max_rows`` rows."""
    if groups.size <= max_rows:
        return np.arange(groups.size)
    codes, _ = pd.factorize(pd.Series(groups), use_na_sentinel=False)
    order = np.random.default_rng(seed).permutation(codes.max() + 1)
    rows_per_patient = np.bincount(codes)[order]
    chosen = order[: max(1, int(np.searchsorted(np.cumsum(rows_per_patient), max_rows)))]
    return np.flatnonzero(np.isin(codes, chosen))


def fit_candidate(
    name: str,
    X: Any,
    y: Any,
    groups: Any,
    *,
    cv_folds: int = 3,
    seed: int = 0,
    tune_max_rows: int = 3000,
    n_threads: int | None = 1,
) -> FittedCandidate:
    """Tune one candidate by patient-grouped CV on ``X`` (train only) and refit it on all rows.

    Args:
        name: one of :data:`ZOO_NAMES`.
        X: train embeddings, one row per image.
        y: 0/1 labels, 1 = abnormal.
        groups: patient id of each row; CV folds never split a patient.
        cv_folds: folds of the search.
        seed: seed of folds, subsample and estimators.
        tune_max_rows: the search runs on a patient subsample of at most about this many rows.
        n_threads: BLAS/OpenMP threads inside this fit (``None``: library defaults). One thread
            per candidate is fastest when candidates run in parallel, and OpenMP on a busy
            machine can be 50x slower than one thread (gradient boosting's per-iteration sync).

    Returns:
        The fitted candidate.

    Raises:
        ConfigError: for an unknown name or unusable inputs.
    """
    with threadpool_limits(limits=n_threads), warnings.catch_warnings(record=True) as caught:
        # Iteration caps are part of the time budget; say how often they bit, once, in the log.
        warnings.simplefilter("always", ConvergenceWarning)
        candidate = _fit_candidate(name, X, y, groups, cv_folds, seed, tune_max_rows)
    capped = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if capped:
        logger.info("%s: %d fits stopped at their iteration cap before converging", name, capped)
    return candidate


def _fit_candidate(
    name: str, X: Any, y: Any, groups: Any, cv_folds: int, seed: int, tune_max_rows: int
) -> FittedCandidate:
    """Body of :func:`fit_candidate`, under its thread limit."""
    start = time.perf_counter()
    cpu_start = time.process_time()
    X_arr, y_arr, groups_arr = _check_training_data(X, y, groups)
    tune = _tuning_rows(groups_arr, tune_max_rows, seed)
    if np.unique(y_arr[tune]).size < 2:
        tune = np.arange(y_arr.size)
    spec = _spec(name, X_arr.shape[1], tune.size * (cv_folds - 1) // cv_folds, seed)
    splits = patient_cv_splits(y_arr[tune], groups_arr[tune], cv_folds, seed)
    search = GridSearchCV(
        spec.pipeline, spec.grid, scoring="roc_auc", cv=splits, refit=False, n_jobs=1
    )
    search.fit(X_arr[tune], y_arr[tune])
    best_params = {key: _plain(value) for key, value in search.best_params_.items()}
    final_spec = _spec(name, X_arr.shape[1], y_arr.size, seed)
    estimator: BaseEstimator = clone(final_spec.pipeline).set_params(**best_params)
    if final_spec.platt:
        full_splits = patient_cv_splits(y_arr, groups_arr, cv_folds, seed)
        # ensemble=False: one Platt map from out-of-fold decision values, one final SVM on all
        # rows; the same scheme as SVC(probability=True), but with patient-grouped folds.
        estimator = CalibratedClassifierCV(
            estimator, method="sigmoid", cv=full_splits, ensemble=False
        )
        estimator.fit(X_arr, y_arr)
        # The fold indices are not needed to predict; keep the saved artifact free of them.
        estimator.cv = cv_folds
    else:
        estimator.fit(X_arr, y_arr)
    seconds = time.perf_counter() - start
    logger.info(
        "fitted %s: cv_auroc=%.4f params=%s in %.1f s",
        name,
        search.best_score_,
        best_params,
        seconds,
    )
    return FittedCandidate(
        name=name,
        estimator=estimator,
        best_params=best_params,
        cv_auroc=float(search.best_score_),
        fit_seconds=float(seconds),
        n_train=int(y_arr.size),
        n_tune=int(tune.size),
        cpu_seconds=float(time.process_time() - cpu_start),
    )


def _plain(value: Any) -> Any:
    """Numpy scalars become Python scalars so that parameters are JSON-safe."""
    return value.item() if isinstance(value, np.generic) else value


def fit_zoo(
    X: Any,
    y: Any,
    groups: Any,
    names: Sequence[str] = ZOO_NAMES,
    cv_folds: int = 3,
    seed: int = 0,
    n_jobs: int = -1,
    *,
    tune_max_rows: int = 3000,
    n_threads: int | None = 1,
) -> dict[str, FittedCandidate]:
    """Tune and fit every requested candidate on train embeddings, in parallel.

    Args:
        X: train embeddings, one row per image (never validation or test rows).
        y: 0/1 labels, 1 = abnormal.
        groups: patient id of each row.
        names: candidates to fit, from :data:`ZOO_NAMES`.
        cv_folds: folds of each search.
        seed: seed of folds, subsamples and estimators.
        n_jobs: parallel worker processes (joblib semantics: -1 = all cores).
        tune_max_rows: row budget of each search (see :func:`fit_candidate`).
        n_threads: BLAS/OpenMP threads per candidate (``None``: library defaults, which
            depend on the core count and so can change the last bits of the results).

    Returns:
        The fitted candidates by name, in the order of ``names``.

    Raises:
        ConfigError: for unknown or repeated names, or unusable inputs.
    """
    unknown = [name for name in names if name not in ZOO_NAMES]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(
            f"names must be distinct entries of {', '.join(ZOO_NAMES)}; got {list(names)}"
        )
    X_arr, y_arr, groups_arr = _check_training_data(X, y, groups)
    ordered = sorted(names, key=_FIT_ORDER.index)
    workers = min(_n_workers(n_jobs), len(ordered))
    fitted = Parallel(n_jobs=workers)(
        delayed(fit_candidate)(
            name,
            X_arr,
            y_arr,
            groups_arr,
            cv_folds=cv_folds,
            seed=seed,
            tune_max_rows=tune_max_rows,
            n_threads=n_threads,
        )
        for name in ordered
    )
    by_name = {candidate.name: candidate for candidate in fitted}
    return {name: by_name[name] for name in names}


def _n_workers(n_jobs: int) -> int:
    if n_jobs == 0:
        raise ConfigError("n_jobs must be a positive count or negative (-1 = all cores), not 0")
    cores = os.cpu_count() or 1
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def predict_scores(candidate: FittedCandidate, X: Any) -> np.ndarray:
    """Probability of class 1 (abnormal) for each row of ``X``.

    Args:
        candidate: a fitted (or loaded) candidate.
        X: embeddings with the same width as in training.

    Returns:
        1-D float array of probabilities.

    Raises:
        ConfigError: when ``X`` has the wrong width.
    """
    X_arr = np.asarray(X)
    expected = getattr(candidate.estimator, "n_features_in_", None)
    if X_arr.ndim != 2 or (expected is not None and X_arr.shape[1] != expected):
        raise ConfigError(
            f"X must have shape (n, {expected}) for candidate {candidate.name!r}, "
            f"got {X_arr.shape}; embed with the same backbone"
        )
    classes = list(candidate.estimator.classes_)
    return candidate.estimator.predict_proba(X_arr)[:, classes.index(1)].astype(float)


def save_candidate(candidate: FittedCandidate, path: str | Path) -> Path:
    """Write a candidate (estimator and metadata) as a skops file.

    Args:
        candidate: the fitted candidate.
        path: destination file, conventionally ``<name>.skops``.

    Returns:
        The path written.
    """
    import skops.io as sio

    path = Path(path)
    # No timings: the same model must give the same bytes (DVC hashes, the package's tag);
    # the stage reports them in configs.json.
    payload = {
        "format": _FORMAT,
        "name": candidate.name,
        "best_params": candidate.best_params,
        "cv_auroc": candidate.cv_auroc,
        "n_train": candidate.n_train,
        "n_tune": candidate.n_tune,
        "estimator": candidate.estimator,
    }
    path.write_bytes(reproducible_skops(sio.dumps(payload)))
    return path


_SKOPS_ID = re.compile(r'("__id__": |"file": ")(\d+)')


def reproducible_skops(data: bytes) -> bytes:
    """The same skops archive with the same bytes for the same objects.

    skops names shared objects and array files after ``id()`` (memory addresses) and stamps
    zip entries with the current time, so two dumps of one model differ. The ids are renumbered
    in order of first appearance in ``schema.json`` (references stay consistent) and every entry
    gets the zip epoch (1980-01-01) as its time; the padding bytes of structured arrays
    (scikit-learn tree nodes: uninitialised memory) are zeroed.

    Args:
        data: a skops archive (``skops.io.dumps``).

    Returns:
        The archive, loadable by ``skops.io.loads`` as before.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        schema = source.read("schema.json").decode()
        numbers: dict[str, str] = {}

        def renumber(match: re.Match[str]) -> str:
            number = numbers.setdefault(match.group(2), str(len(numbers) + 1))
            return match.group(1) + number

        schema = _SKOPS_ID.sub(renumber, schema)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as target:
            for info in source.infolist():
                name = info.filename
                if name == "schema.json":
                    content = schema.encode()
                else:
                    content = source.read(name)
                    if name.endswith(".npy"):
                        content = _zero_padding(content)
                    stem, dot, suffix = name.partition(".")
                    name = numbers.get(stem, stem) + dot + suffix
                entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                entry.compress_type = info.compress_type
                entry.external_attr = info.external_attr
                target.writestr(entry, content)
    return out.getvalue()


def _zero_padding(npy: bytes) -> bytes:
    """A structured array's bytes with its padding zeroed: scikit-learn's tree nodes have
    padding bytes that hold whatever memory held (uninitialised), different at every fit."""
    array = np.load(io.BytesIO(npy), allow_pickle=False)
    if array.dtype.fields is None:
        return npy
    clean = np.zeros(array.shape, dtype=array.dtype)  # zeroed memory, padding included
    for name in array.dtype.names or ():
        clean[name] = array[name]
    out = io.BytesIO()
    np.save(out, clean, allow_pickle=False)
    return out.getvalue()


def load_candidate(path: str | Path) -> FittedCandidate:
    """Read a candidate written by :func:`save_candidate`, trusting only :data:`TRUSTED_TYPES`.

    Args:
        path: the skops file.

    Returns:
        The candidate, ready for :func:`predict_scores`.

    Raises:
        DataError: when the file is missing or unreadable, holds a type outside
            :data:`TRUSTED_TYPES` (the type names are listed), or is not a candidate file.
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise DataError(f"candidate file {path} does not exist; run the transfer stage first")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise DataError(f"{path} is not a readable skops file: {error}") from error
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise DataError(
            f"refusing to load {path}: it contains types outside the trusted list: {refused}. "
            "Only files written by cxr_triage.models.transfer.save_candidate can be loaded"
        )
    try:
        payload = sio.load(path, trusted=sorted(set(untrusted)))
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as error:
        raise DataError(f"{path} could not be loaded as a transfer candidate: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise DataError(f"{path} is a skops file but not a cxr_triage transfer candidate")
    return FittedCandidate(
        name=str(payload["name"]),
        estimator=payload["estimator"],
        best_params=dict(payload["best_params"]),
        cv_auroc=float(payload["cv_auroc"]),
        fit_seconds=float(payload.get("fit_seconds", 0.0)),  # in files written before 2026-11
        n_train=int(payload["n_train"]),
        n_tune=int(payload["n_tune"]),
        cpu_seconds=float(payload.get("cpu_seconds", 0.0)),
    )


# --------------------------------------------------------------------------------------------
# The comparison protocol: every configuration scored out of fold on shared patient folds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooConfig:
    """One hyperparameter setting of one zoo candidate.

    Attributes:
        candidate: the zoo member (one of :data:`ZOO_NAMES`).
        name: ``candidate(param=value,...)``, unique across the zoo.
        params: pipeline parameters (``step__name``) set on the candidate's pipeline.
    """

    candidate: str
    name: str
    params: dict[str, Any]


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def zoo_configs(names: Sequence[str], n_features: int, n_rows: int, seed: int) -> list[ZooConfig]:
    """Every grid point of every named candidate, for fits on at least ``n_rows`` rows.

    Args:
        names: candidates from :data:`ZOO_NAMES`.
        n_features: embedding width (sets the RBF ``gamma`` grid).
        n_rows: the smallest number of rows any fit will see (caps k-NN's neighbours).
        seed: seed of the estimators.

    Raises:
        ConfigError: an unknown or repeated name.
    """
    unknown = [n for n in names if n not in ZOO_NAMES]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(
            f"names must be distinct entries of {', '.join(ZOO_NAMES)}; got {list(names)}"
        )
    configs = []
    for name in names:
        for params in ParameterGrid(_spec(name, n_features, n_rows, seed).grid):
            label = ",".join(f"{k.split('__')[-1]}={_short(v)}" for k, v in sorted(params.items()))
            plain = {k: _plain(v) for k, v in params.items()}
            configs.append(ZooConfig(name, f"{name}({label})", plain))
    return configs


def fit_config(
    config: ZooConfig, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, seed: int
) -> BaseEstimator:
    """Fit one configuration on ``X`` (one BLAS/OpenMP thread; Platt folds by patient).

    Returns:
        The fitted estimator (``predict_proba`` gives class 1 in column ``classes_ == 1``).
    """
    spec = _spec(config.candidate, X.shape[1], len(y), seed)
    estimator: BaseEstimator = clone(spec.pipeline).set_params(**config.params)
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if spec.platt:
            n_patients = min(np.unique(groups[y == k]).size for k in (0, 1))
            splits = patient_cv_splits(y, groups, max(2, min(3, n_patients)), seed)
            estimator = CalibratedClassifierCV(
                estimator, method="sigmoid", cv=splits, ensemble=False
            )
            estimator.fit(X, y)
            estimator.cv = len(splits)  # keep the saved artifact free of fold indices
        else:
            estimator.fit(X, y)
    return estimator


def positive_proba(estimator: Any, X: np.ndarray) -> np.ndarray:
    """Probability of class 1 (abnormal) from a fitted estimator, float64 ``(n,)``."""
    classes = list(estimator.classes_)
    return estimator.predict_proba(X)[:, classes.index(1)].astype(np.float64)


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold probabilities of several configurations on shared folds.

    Attributes:
        names: one per configuration (column).
        scores: ``(repeats, n_rows, n_configs)`` probability of abnormal, each row scored by
            the model of the fold that held it out.
        fold: ``(repeats, n_rows)`` the fold that scored each row.
    """

    names: tuple[str, ...]
    scores: np.ndarray
    fold: np.ndarray

    def frame(self, image_ids: np.ndarray) -> pd.DataFrame:
        """Long table: ``image_id, repeat, fold`` and one column per configuration."""
        repeats, n = self.fold.shape
        out = pd.DataFrame(
            {
                "image_id": np.tile(np.asarray(image_ids), repeats),
                "repeat": np.repeat(np.arange(repeats), n),
                "fold": self.fold.reshape(-1),
            }
        )
        values = self.scores.reshape(repeats * n, len(self.names))
        return pd.concat([out, pd.DataFrame(values, columns=list(self.names))], axis=1)


def _fold_predictions(
    configs: Sequence[ZooConfig],
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    fold: Fold,
    seed: int,
) -> np.ndarray:
    out = np.empty((fold.score.size, len(configs)))
    for j, config in enumerate(configs):
        model = fit_config(config, X[fold.fit], y[fold.fit], groups[fold.fit], seed=seed)
        out[:, j] = positive_proba(model, X[fold.score])
    return out


def cross_validate_configs(
    configs: Sequence[ZooConfig],
    X: Any,
    y: Any,
    groups: Any,
    folds: Sequence[Fold],
    *,
    seed: int,
    n_jobs: int = 1,
) -> OutOfFold:
    """Score every configuration out of fold.

    Args:
        configs: from :func:`zoo_configs`.
        X: development embeddings ``(n, D)`` (train + val rows; never test).
        y: 0/1 labels.
        groups: patient id per row.
        folds: from :func:`cxr_triage.data.folds.dev_folds`; each repeat's ``score`` sets
            must partition the rows.
        seed: seed of the estimators.
        n_jobs: parallel processes over folds (results do not depend on it).

    Returns:
        The out-of-fold scores.

    Raises:
        ConfigError: unusable inputs, or folds that do not cover every row once per repeat.
    """
    X_arr, y_arr, groups_arr = _check_training_data(X, y, groups)
    results = Parallel(n_jobs=_n_workers(n_jobs))(
        delayed(_fold_predictions)(configs, X_arr, y_arr, groups_arr, fold, seed) for fold in folds
    )
    return _out_of_fold(configs, folds, results, y_arr.size)


def cross_validate_fold_features(
    configs: Sequence[ZooConfig],
    features: Sequence[Any],
    y: Any,
    groups: Any,
    folds: Sequence[Fold],
    *,
    seed: int,
) -> OutOfFold:
    """As :func:`cross_validate_configs`, with a feature matrix of its own for each fold.

    Used with one backbone per outer fold (``cxr_triage.stages.backbone.
    fold_pretrained_embeddings``): fold ``i``'s models are fitted and scored on
    ``features[i]`` ``(n, D)``, embeddings of every development row.

    Raises:
        ConfigError: as :func:`cross_validate_configs`, or not one matrix per fold.
    """
    if len(features) != len(folds):
        raise ConfigError(f"{len(features)} feature matrices for {len(folds)} folds")
    results, n = [], 0
    for X, fold in zip(features, folds, strict=True):
        X_arr, y_arr, groups_arr = _check_training_data(X, y, groups)
        results.append(_fold_predictions(configs, X_arr, y_arr, groups_arr, fold, seed))
        n = y_arr.size
    return _out_of_fold(configs, folds, results, n)


def _out_of_fold(
    configs: Sequence[ZooConfig], folds: Sequence[Fold], results: Sequence[np.ndarray], n: int
) -> OutOfFold:
    repeats = 1 + max(f.repeat for f in folds)
    scores = np.full((repeats, n, len(configs)), np.nan)
    fold_of = np.full((repeats, n), -1, dtype=np.int64)
    for fold, values in zip(folds, results, strict=True):
        scores[fold.repeat, fold.score] = values
        fold_of[fold.repeat, fold.score] = fold.fold
    if (fold_of < 0).any():
        raise ConfigError("the folds do not score every row once per repeat")
    return OutOfFold(tuple(c.name for c in configs), scores, fold_of)


def refit_config(
    config: ZooConfig, X: Any, y: Any, groups: Any, *, seed: int, cv_auroc: float
) -> FittedCandidate:
    """Refit the chosen configuration on every development row, as a saveable candidate."""
    start, cpu_start = time.perf_counter(), time.process_time()
    X_arr, y_arr, groups_arr = _check_training_data(X, y, groups)
    estimator = fit_config(config, X_arr, y_arr, groups_arr, seed=seed)
    return FittedCandidate(
        name=config.candidate,
        estimator=estimator,
        best_params=dict(config.params),
        cv_auroc=float(cv_auroc),
        fit_seconds=float(time.perf_counter() - start),
        n_train=int(y_arr.size),
        n_tune=int(y_arr.size),
        cpu_seconds=float(time.process_time() - cpu_start),
    )


METADATA = "metadata_only"  # the shortcut baseline's candidate name


def _metadata_model(seed: int) -> Pipeline:
    encoder = OneHotEncoder(handle_unknown="ignore", min_frequency=5)
    return Pipeline([("onehot", encoder), ("model", LogisticRegression(C=1.0, max_iter=1000))])


def cross_validate_metadata(
    metadata: pd.DataFrame, y: Any, folds: Sequence[Fold], *, seed: int
) -> OutOfFold:
    """The shortcut baseline: logistic regression on one-hot acquisition/demographic columns.

    Args:
        metadata: one row per development image, categorical columns as strings (e.g. view
            position, sex, age band, site, manufacturer); constant columns carry nothing.
        y: 0/1 labels.
        folds: the comparison's folds.
        seed: unused by the deterministic solver; kept for a uniform signature.

    Returns:
        Out-of-fold probabilities under the name :data:`METADATA`.
    """
    y_arr = np.asarray(y).astype(np.int64)
    frame = metadata.astype(str).reset_index(drop=True)
    repeats = 1 + max(f.repeat for f in folds)
    scores = np.full((repeats, len(frame), 1), np.nan)
    fold_of = np.full((repeats, len(frame)), -1, dtype=np.int64)
    for fold in folds:
        with threadpool_limits(limits=1):
            model = _metadata_model(seed).fit(frame.iloc[fold.fit], y_arr[fold.fit])
            scores[fold.repeat, fold.score, 0] = positive_proba(model, frame.iloc[fold.score])
        fold_of[fold.repeat, fold.score] = fold.fold
    return OutOfFold((METADATA,), scores, fold_of)


def leave_one_site_out(
    config: ZooConfig, X: Any, y: Any, groups: Any, sites: Any, *, seed: int
) -> pd.DataFrame:
    """Train on every site but one, score the one left out; one row per site.

    Returns:
        ``site, n, n_abnormal, auroc`` (NaN AUROC where the site has a single class).
    """
    X_arr, y_arr, groups_arr = _check_training_data(X, y, groups)
    sites_arr = np.asarray(sites).astype(str)
    rows = []
    for site in sorted(set(sites_arr)):
        held = sites_arr == site
        auroc = math.nan
        if np.unique(y_arr[~held]).size == 2 and np.unique(y_arr[held]).size == 2:
            model = fit_config(config, X_arr[~held], y_arr[~held], groups_arr[~held], seed=seed)
            auroc = float(roc_auc_score(y_arr[held], positive_proba(model, X_arr[held])))
        rows.append(
            {
                "site": site,
                "n": int(held.sum()),
                "n_abnormal": int(y_arr[held].sum()),
                "auroc": auroc,
            }
        )
    return pd.DataFrame(rows)
