"""Tests of cxr_triage.evaluation.calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.isotonic import IsotonicRegression

from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.calibration import (
    CALIBRATOR_NAMES,
    Calibrator,
    Identity,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
    calibrator_from_dict,
    make_calibrator,
)
from cxr_triage.evaluation.metrics import auroc, expected_calibration_error, log_loss


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from true logits z, scores sigmoid(3 z): three times too sharp."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=n)
    y_true = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y_true, 1 / (1 + np.exp(-3 * z)), 3 * z


def _round_trip(calibrator: Calibrator) -> Calibrator:
    return calibrator_from_dict(json.loads(json.dumps(calibrator.to_dict())))


def test_temperature_scaling_reduces_log_loss_of_overconfident_scores() -> None:
    y_val, s_val, _ = _overconfident(3000, 0)
    y_test, s_test, _ = _overconfident(3000, 1)
    scaler = TemperatureScaling().fit(y_val, s_val)
    assert scaler.temperature == pytest.approx(3.0, rel=0.15)
    calibrated = scaler.transform(s_test)
    assert log_loss(y_test, calibrated) < log_loss(y_test, s_test) - 0.05
    assert expected_calibration_error(y_test, calibrated) < expected_calibration_error(
        y_test, s_test
    )
    # One monotone parameter: the ranking, hence AUROC, is unchanged.
    assert auroc(y_test, calibrated) == pytest.approx(auroc(y_test, s_test))


def test_temperature_scaling_on_logits_matches_probabilities() -> None:
    y_val, s_val, z_val = _overconfident(2000, 2)
    from_probs = TemperatureScaling().fit(y_val, s_val)
    from_logits = TemperatureScaling(from_logits=True).fit(y_val, z_val)
    assert from_logits.temperature == pytest.approx(from_probs.temperature, rel=1e-3)
    np.testing.assert_allclose(
        from_logits.transform(z_val), from_probs.transform(s_val), atol=1e-4
    )


def test_platt_scaling_recovers_slope_and_intercept() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, size=5000)
    y_true = (rng.random(5000) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(int)
    platt = PlattScaling().fit(y_true, 1 / (1 + np.exp(-z)))
    assert platt.slope == pytest.approx(0.5, abs=0.08)
    assert platt.intercept == pytest.approx(-1.0, abs=0.12)
    restored = _round_trip(platt)
    np.testing.assert_array_equal(restored.transform([0.2, 0.7]), platt.transform([0.2, 0.7]))


def test_isotonic_round_trips_through_json_identically() -> None:
    y_val, s_val, _ = _overconfident(1000, 4)
    calibrator = IsotonicCalibration().fit(y_val, s_val)
    restored = _round_trip(calibrator)
    assert isinstance(restored, IsotonicCalibration)
    grid = np.linspace(-0.1, 1.1, 1001)
    np.testing.assert_array_equal(restored.transform(grid), calibrator.transform(grid))
    np.testing.assert_array_equal(restored.x_thresholds, calibrator.x_thresholds)


def test_isotonic_matches_sklearn_predictions() -> None:
    y_val, s_val, _ = _overconfident(500, 5)
    ours = IsotonicCalibration().fit(y_val, s_val)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(s_val, y_val)
    grid = np.linspace(0, 1, 257)
    np.testing.assert_allclose(ours.transform(grid), reference.predict(grid), atol=1e-12)
    assert np.all(np.diff(ours.transform(grid)) >= 0)


def test_identity_and_factory() -> None:
    assert set(CALIBRATOR_NAMES) == {"none", "temperature", "platt", "isotonic"}
    identity = make_calibrator("none").fit([0, 1], [0.2, 0.8])
    assert isinstance(identity, Identity)
    np.testing.assert_array_equal(identity.transform([0.2, 0.8]), [0.2, 0.8])
    assert isinstance(make_calibrator("temperature", from_logits=True), TemperatureScaling)
    for name in CALIBRATOR_NAMES:
        assert make_calibrator(name).name == name


def test_make_calibrator_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="'isotonic'"):
        make_calibrator("beta")
    with pytest.raises(ConfigError, match="unknown name"):
        calibrator_from_dict({"name": "beta"})


def test_transform_before_fit_raises() -> None:
    with pytest.raises(NotFittedError):
        PlattScaling().transform([0.5])
    with pytest.raises(NotFittedError):
        TemperatureScaling().transform([0.5])
