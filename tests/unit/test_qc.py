"""The input quality gate (inference/qc.py): header rules, the content model, the verdict and
its typed refusal, on images drawn here (the package-level and real-image tests are in
tests/integration/test_qc_gate.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from cxr_triage.errors import InvalidImageError, QcFailedError
from cxr_triage.inference.qc import (
    CHECKS,
    QcModel,
    QcSettings,
    QualityGate,
    fit_qc_model,
    layout,
)
from helpers.qc import SIDE, chest_like


def _gate(model: QcModel, **actions: str) -> QualityGate:
    return QualityGate(QcSettings(actions={c: "refuse" for c in CHECKS} | actions), model)


def test_layout_is_standardised_per_image_and_handles_any_side() -> None:
    images = chest_like(3, 2)
    rows = layout(images, 8)
    assert rows.shape == (3, 64)
    assert np.allclose(rows.mean(axis=1), 0, atol=1e-9)
    assert np.allclose(rows.std(axis=1), 1, atol=1e-3)
    assert layout(images[:, :60, :60], 8).shape == (3, 64)  # 60 is no multiple of 8


def test_upright_images_pass_and_their_inverted_and_rotated_copies_are_caught(qc_model) -> None:
    gate = _gate(qc_model, out_of_distribution="warn")
    held_out = chest_like(20, 3)
    upright = gate.check_many(held_out, [{}] * 20)
    assert all(v.passed for v in upright), [v.to_dict()["failed"] for v in upright]
    inverted = gate.check_many(255 - held_out, [{}] * 20)
    assert all("inverted" in v.to_dict()["failed"] for v in inverted)
    rotated = gate.check_many(np.rot90(held_out, 1, axes=(1, 2)), [{}] * 20)
    assert all("rotated" in v.to_dict()["failed"] for v in rotated)
    assert all(not v.passed for v in inverted + rotated)


def test_something_unlike_the_training_images_is_out_of_distribution(qc_model) -> None:
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (5, SIDE, SIDE), dtype=np.uint8)
    verdicts = _gate(qc_model, out_of_distribution="warn").check_many(noise, [{}] * 5)
    assert all("out_of_distribution" in v.to_dict()["failed"] for v in verdicts)
    assert all(v.status in ("warn", "refuse") for v in verdicts)


def test_header_rules_name_the_check_and_follow_their_action(qc_model) -> None:
    image = chest_like(1, 5)[0]
    gate = _gate(qc_model, burned_in_annotation="warn", out_of_distribution="off")
    cases = {
        "view": {"view_position": "ll"},
        "min_size": {"orig_rows": 200, "orig_cols": 1024},
        "pediatric": {"age": 9},
        "burned_in_annotation": {"burned_in_annotation": "YES"},
    }
    for check, meta in cases.items():
        verdict = gate.check(image, meta)
        assert verdict.to_dict()["failed"] == [check], (check, verdict.to_dict())
    assert gate.check(image, cases["burned_in_annotation"]).status == "warn"
    assert gate.check(image, cases["view"]).status == "refuse"
    # Unknown values (a PNG says nothing of age or view) pass.
    assert gate.check(image, {"age": None, "view_position": ""}).status == "pass"
    # An action set to off removes the check from the verdict.
    assert "out_of_distribution" not in [c["name"] for c in verdict.to_dict()["checks"]]


def test_a_refusal_is_a_typed_422_naming_the_checks(qc_model) -> None:
    verdict = _gate(qc_model).check(chest_like(1, 6)[0], {"view_position": "LATERAL", "age": 12})
    error = verdict.error()
    assert isinstance(error, QcFailedError) and isinstance(error, InvalidImageError)
    assert error.reason == "qc_failed" and error.http_status == 422
    assert error.checks == ("view", "pediatric")
    assert "view" in str(error) and "frontal" in str(error)
    assert _gate(qc_model).check(chest_like(1, 6)[0], {}).error() is None


def test_settings_and_model_round_trip(qc_model, tmp_path) -> None:
    settings = QcSettings(actions={"view": "warn"}, min_size_px=128, lateral_views=("LL",))
    assert QcSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(Exception, match="invalid QC actions"):
        QcSettings.from_dict({"actions": {"view": "explode"}})
    path = tmp_path / "qc.npz"
    path.write_bytes(qc_model.to_bytes())
    loaded = QcModel.load(path)
    images = chest_like(4, 7)
    for key, values in qc_model.margins(images).items():
        assert np.allclose(loaded.margins(images)[key], values), key
    (tmp_path / "bad.npz").write_bytes(b"not npz")
    with pytest.raises(Exception, match="not a readable QC model"):
        QcModel.load(tmp_path / "bad.npz")
    assert io.BytesIO(qc_model.to_bytes()).read(2) == b"PK"  # a plain npz, no pickle


def test_same_inputs_and_seed_give_the_same_model() -> None:
    a = fit_qc_model(chest_like(20, 0), chest_like(10, 1), grid=8, augment_copies=1, seed=3)
    b = fit_qc_model(chest_like(20, 0), chest_like(10, 1), grid=8, augment_copies=1, seed=3)
    assert np.array_equal(a.coef, b.coef) and a.ood_limit == b.ood_limit
