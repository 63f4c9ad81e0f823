"""Post-hoc recalibration of probabilities, fitted on validation scores only.

Every calibrator has the same small interface: ``fit(y_true, y_score)`` on *validation* scores,
``transform(y_score)`` returning probabilities, and ``to_dict()`` / ``from_dict()`` to a plain,
JSON-safe dict (floats and lists only, no pickle) so that it can be stored next to the model and
applied by the service. :func:`calibrator_from_dict` rebuilds any of them from its dict.

* :class:`TemperatureScaling`: one parameter ``T`` dividing the logit (Guo et al. 2017); keeps
  the ranking, so AUROC is unchanged. Meant for the fine-tuned network, whose logits are often
  over-confident.
* :class:`PlattScaling`: logistic regression on the logit of the score, ``sigmoid(a*z + b)``
  (Platt 1999, without his target smoothing); also keeps the ranking when ``a > 0``.
* :class:`IsotonicCalibration`: monotone step-wise-linear map; flexible, may create ties (and so
  change AUROC slightly); needs a few hundred validation studies to be reliable.
* :class:`Identity`: no change, so "no recalibration" is a calibrator like the others.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from sklearn.exceptions import NotFittedError
from sklearn.isotonic import IsotonicRegression

from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.metrics import _check_scores

__all__ = [
    "CALIBRATOR_NAMES",
    "Calibrator",
    "cross_fit_calibration",
    "Identity",
    "IsotonicCalibration",
    "PlattScaling",
    "TemperatureScaling",
    "calibrator_from_dict",
    "make_calibrator",
]

# Keeps logits finite for scores of exactly 0 or 1 (|logit| <= ~16).
_EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Written through exp(-|z|) so that large |z| neither overflows nor loses precision.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _nll_of_logits(y_true: np.ndarray, z: np.ndarray) -> float:
    """Mean binary cross-entropy of logits ``z`` (log-sum-exp form, no clipping needed)."""
    return float(np.mean(np.logaddexp(0.0, z) - y_true * z))


def _as_scores(y_score: Any) -> np.ndarray:
    scores = np.asarray(y_score, dtype=float)
    if scores.ndim != 1 or not np.isfinite(scores).all():
        raise ConfigError("y_score must be a 1-D array of finite scores")
    return scores


class Calibrator(ABC):
    """Maps scores to calibrated probabilities of class 1 (abnormal)."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, y_true: Any, y_score: Any) -> Calibrator:
        """Fit on validation labels and scores; returns ``self``."""

    @abstractmethod
    def transform(self, y_score: Any) -> np.ndarray:
        """Return calibrated probabilities for ``y_score``."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict with ``name`` and the fitted parameters."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""

    @classmethod
    def _check_name(cls, data: dict[str, Any]) -> None:
        if data.get("name") != cls.name:
            raise ConfigError(
                f"calibrator dict has name {data.get('name')!r}, expected {cls.name!r}; "
                "use calibrator_from_dict() to dispatch on the name"
            )


class Identity(Calibrator):
    """Returns the scores unchanged (clipped to [0, 1])."""

    name = "none"

    def fit(self, y_true: Any, y_score: Any) -> Identity:
        """Check the inputs; there is nothing to fit."""
        _check_scores(y_true, y_score)
        return self

    def transform(self, y_score: Any) -> np.ndarray:
        """Return ``y_score`` clipped to [0, 1]."""
        return np.clip(_as_scores(y_score), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"name": "none"}``."""
        return {"name": self.name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Identity:
        """Rebuild from :meth:`to_dict` output."""
        cls._check_name(data)
        return cls()


class TemperatureScaling(Calibrator):
    """Divide the logit by a temperature ``T`` fitted by minimising validation log loss.

    Args:
        from_logits: ``y_score`` passed to ``fit``/``transform`` are logits (the network's raw
            output) rather than probabilities. ``transform`` always returns probabilities.
        temperature: a known temperature; ``None`` until fitted.
    """

    name = "temperature"
    # Search range for T; outside it the scores carry essentially no information or are binary.
    _T_BOUNDS = (0.05, 20.0)

    def __init__(self, *, from_logits: bool = False, temperature: float | None = None) -> None:
        self.from_logits = from_logits
        self.temperature = temperature

    def _to_logits(self, y_score: Any) -> np.ndarray:
        scores = _as_scores(y_score)
        return scores if self.from_logits else _logit(scores)

    def fit(self, y_true: Any, y_score: Any) -> TemperatureScaling:
        """Fit ``T`` on validation scores.

        Args:
            y_true: 0/1 labels, 1 = abnormal.
            y_score: probabilities (or logits when ``from_logits``).

        Returns:
            ``self``.

        Raises:
            ConfigError: on bad inputs.
        """
        y_true_arr, _ = _check_scores(y_true, y_score, probabilities=not self.from_logits)
        z = self._to_logits(y_score)
        # Optimise log T so the search is symmetric between sharpening and softening.
        result = minimize_scalar(
            lambda log_t: _nll_of_logits(y_true_arr, z / math.exp(log_t)),
            bounds=(math.log(self._T_BOUNDS[0]), math.log(self._T_BOUNDS[1])),
            method="bounded",
            options={"xatol": 1e-6},
        )
        self.temperature = float(math.exp(result.x))
        return self

    def transform(self, y_score: Any) -> np.ndarray:
        """Return ``sigmoid(logit / T)``."""
        if self.temperature is None:
            raise NotFittedError(
                "TemperatureScaling is not fitted; call fit() on validation scores"
            )
        return _sigmoid(self._to_logits(y_score) / self.temperature)

    def to_dict(self) -> dict[str, Any]:
        """Return ``name``, ``temperature`` and ``from_logits``."""
        return {
            "name": self.name,
            "temperature": self.temperature,
            "from_logits": self.from_logits,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemperatureScaling:
        """Rebuild from :meth:`to_dict` output."""
        cls._check_name(data)
        return cls(from_logits=bool(data["from_logits"]), temperature=data["temperature"])


class PlattScaling(Calibrator):
    """Logistic regression on the logit of the score: ``sigmoid(slope * logit(s) + intercept)``.

    Fitted by unpenalised maximum likelihood; with ``slope = 1, intercept = 0`` it is the identity.

    Args:
        slope: known slope; ``None`` until fitted.
        intercept: known intercept.
    """

    name = "platt"

    def __init__(self, *, slope: float | None = None, intercept: float | None = None) -> None:
        self.slope = slope
        self.intercept = intercept

    def fit(self, y_true: Any, y_score: Any) -> PlattScaling:
        """Fit slope and intercept on validation probabilities.

        Args:
            y_true: 0/1 labels, 1 = abnormal.
            y_score: probabilities of class 1.

        Returns:
            ``self``.

        Raises:
            ConfigError: on bad inputs.
        """
        y_true_arr, y_score_arr = _check_scores(y_true, y_score)
        z = _logit(y_score_arr)

        def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
            u = params[0] * z + params[1]
            residual = _sigmoid(u) - y_true_arr
            grad = np.array([np.mean(residual * z), np.mean(residual)])
            return _nll_of_logits(y_true_arr, u), grad

        result = minimize(loss_and_grad, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        self.slope, self.intercept = float(result.x[0]), float(result.x[1])
        return self

    def transform(self, y_score: Any) -> np.ndarray:
        """Return ``sigmoid(slope * logit(y_score) + intercept)``."""
        if self.slope is None or self.intercept is None:
            raise NotFittedError("PlattScaling is not fitted; call fit() on validation scores")
        return _sigmoid(self.slope * _logit(_as_scores(y_score)) + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        """Return ``name``, ``slope`` and ``intercept``."""
        return {"name": self.name, "slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlattScaling:
        """Rebuild from :meth:`to_dict` output."""
        cls._check_name(data)
        return cls(slope=data["slope"], intercept=data["intercept"])


class IsotonicCalibration(Calibrator):
    """Monotone (non-decreasing) map fitted by isotonic regression.

    Only the breakpoints (``x_thresholds``, ``y_thresholds``) are kept; ``transform`` linearly
    interpolates between them and clips outside their range, which is what sklearn's
    ``IsotonicRegression(out_of_bounds="clip").predict`` computes, so no sklearn object is stored.

    Args:
        x_thresholds: known breakpoints on the score axis (increasing); ``None`` until fitted.
        y_thresholds: calibrated probability at each breakpoint.
    """

    name = "isotonic"

    def __init__(
        self,
        *,
        x_thresholds: list[float] | np.ndarray | None = None,
        y_thresholds: list[float] | np.ndarray | None = None,
    ) -> None:
        self.x_thresholds = None if x_thresholds is None else np.asarray(x_thresholds, float)
        self.y_thresholds = None if y_thresholds is None else np.asarray(y_thresholds, float)

    def fit(self, y_true: Any, y_score: Any) -> IsotonicCalibration:
        """Fit the monotone map on validation probabilities.

        Args:
            y_true: 0/1 labels, 1 = abnormal.
            y_score: probabilities of class 1.

        Returns:
            ``self``.

        Raises:
            ConfigError: on bad inputs or fewer than two distinct scores.
        """
        y_true_arr, y_score_arr = _check_scores(y_true, y_score)
        if np.unique(y_score_arr).size < 2:
            raise ConfigError("isotonic calibration needs at least two distinct validation scores")
        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        model.fit(y_score_arr, y_true_arr)
        self.x_thresholds = np.asarray(model.X_thresholds_, dtype=float)
        self.y_thresholds = np.asarray(model.y_thresholds_, dtype=float)
        return self

    def transform(self, y_score: Any) -> np.ndarray:
        """Return the interpolated calibrated probabilities."""
        if self.x_thresholds is None or self.y_thresholds is None:
            raise NotFittedError(
                "IsotonicCalibration is not fitted; call fit() on validation scores"
            )
        return np.interp(_as_scores(y_score), self.x_thresholds, self.y_thresholds)

    def to_dict(self) -> dict[str, Any]:
        """Return ``name``, ``x_thresholds`` and ``y_thresholds`` as lists of floats."""
        return {
            "name": self.name,
            "x_thresholds": None if self.x_thresholds is None else self.x_thresholds.tolist(),
            "y_thresholds": None if self.y_thresholds is None else self.y_thresholds.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IsotonicCalibration:
        """Rebuild from :meth:`to_dict` output."""
        cls._check_name(data)
        x, y = data["x_thresholds"], data["y_thresholds"]
        if x is not None and (y is None or len(x) != len(y)):
            raise ConfigError("isotonic dict needs x_thresholds and y_thresholds of equal length")
        return cls(x_thresholds=x, y_thresholds=y)


_CALIBRATORS: dict[str, type[Calibrator]] = {
    "none": Identity,
    "temperature": TemperatureScaling,
    "platt": PlattScaling,
    "isotonic": IsotonicCalibration,
}
CALIBRATOR_NAMES: tuple[str, ...] = tuple(_CALIBRATORS)


def make_calibrator(name: str, **options: Any) -> Calibrator:
    """Return a new, unfitted calibrator.

    Args:
        name: one of ``"none"``, ``"temperature"``, ``"platt"``, ``"isotonic"``.
        **options: passed to the class, e.g. ``from_logits=True`` for ``"temperature"``.

    Returns:
        The calibrator.

    Raises:
        ConfigError: for an unknown name (the message lists the valid ones).
    """
    if name not in _CALIBRATORS:
        raise ConfigError(
            f"unknown calibrator {name!r}; choose one of {', '.join(map(repr, CALIBRATOR_NAMES))}"
        )
    return _CALIBRATORS[name](**options)


def calibrator_from_dict(data: dict[str, Any]) -> Calibrator:
    """Rebuild a fitted calibrator from the dict written by its ``to_dict``.

    Args:
        data: output of ``to_dict`` (e.g. read back from JSON).

    Returns:
        The calibrator, ready to ``transform``.

    Raises:
        ConfigError: when ``data["name"]`` is not a known calibrator.
    """
    name = data.get("name") if isinstance(data, dict) else None
    if name not in _CALIBRATORS:
        raise ConfigError(
            f"calibrator dict has unknown name {name!r}; expected one of "
            f"{', '.join(map(repr, CALIBRATOR_NAMES))}"
        )
    return _CALIBRATORS[name].from_dict(data)


def cross_fit_calibration(
    name: str, y_true: Any, y_score: Any, groups: Any, *, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, Calibrator]:
    """Recalibrate on validation without judging the calibrator on the data it was fitted on.

    Each patient fold of val is transformed by a calibrator fitted on the other folds (honest,
    out-of-fold scores for measuring calibration); the calibrator returned for use is then fitted
    on all of val. Test is never involved.

    Args:
        name: calibrator name for :func:`make_calibrator`.
        y_true: val labels (0/1).
        y_score: raw val scores (probabilities).
        groups: patient id per row; folds never split a patient.
        folds: number of patient folds.
        seed: fold assignment seed.

    Returns:
        ``(out_of_fold_scores, calibrator_fitted_on_all_of_val)``.
    """
    from cxr_triage.models.transfer import patient_cv_splits

    y_true, scores = np.asarray(y_true), _as_scores(y_score)
    out_of_fold = np.empty_like(scores, dtype=np.float64)
    for fit_rows, held_rows in patient_cv_splits(y_true, np.asarray(groups), folds, seed):
        fold = make_calibrator(name).fit(y_true[fit_rows], scores[fit_rows])
        out_of_fold[held_rows] = fold.transform(scores[held_rows])
    return out_of_fold, make_calibrator(name).fit(y_true, scores)
