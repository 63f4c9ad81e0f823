"""cxr_triage.inference.features: the one layout of monitoring rows."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_triage.inference.features import image_statistics, monitoring_columns, monitoring_frame
from cxr_triage.inference.package import fit_projection


def _images(noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    base = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 11.0)
    noisy = base[None] + rng.normal(0, noise, size=(5, 64, 64))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_image_statistics_see_noise_and_blur():
    clean, noisy = image_statistics(_images(1.0)), image_statistics(_images(25.0))
    assert (noisy["img_noise"] > 3 * clean["img_noise"]).all()
    assert (noisy["img_sharpness"] > clean["img_sharpness"]).all()
    assert np.allclose(
        clean["img_mean"], _images(1.0).reshape(5, -1).mean(axis=1) / 255, atol=1e-6
    )
    assert (clean["img_p05"] <= clean["img_p50"]).all() and (
        clean["img_p50"] <= clean["img_p95"]
    ).all()
    flat = np.full((1, 32, 32), 77, np.uint8)
    assert image_statistics(flat)["img_entropy"][0] == pytest.approx(0.0)


def test_monitoring_frame_keeps_only_known_columns_and_bands_age():
    images = _images(5.0)[:2]
    metadata = [
        {"site": "a", "age": 45, "sex": "F", "patient_id": "SECRET", "orig_rows": 512},
        {"site": None, "age": None, "manufacturer": "  "},
    ]
    frame = monitoring_frame(
        images,
        summary=np.ones((2, 4)),
        prob_abnormal=np.array([0.2, 0.9]),
        labels=["normal", "abnormal"],
        metadata=metadata,
    )
    assert list(frame.columns) == monitoring_columns(3)
    assert "SECRET" not in frame.to_string() and "age" not in frame.columns
    assert list(frame["age_band"]) == ["40-59", "unknown"]
    assert list(frame["site"]) == ["a", "unknown"] and frame.loc[1, "manufacturer"] == "unknown"
    with pytest.raises(ValueError, match="differ in length"):
        monitoring_frame(
            images,
            summary=np.ones((1, 4)),
            prob_abnormal=[0.1],
            labels=["normal"],
            metadata=metadata,
        )


def test_projection_is_deterministic_and_orders_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1])
    first, again = fit_projection(x, 3), fit_projection(x.copy(), 3)
    assert np.array_equal(first["components"], again["components"])
    projected = (x - first["mean"]) @ first["components"].T
    variances = projected.var(axis=0)
    assert variances[0] > variances[1] > variances[2]
    assert fit_projection(x, 50)["components"].shape == (6, 6)
