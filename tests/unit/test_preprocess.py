"""cxr_triage.data.preprocess: the one resize/stretch/normalise path for training and serving."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_triage.data.preprocess import (
    MODEL_INPUT_MEAN,
    MODEL_INPUT_STD,
    prepare_image,
    to_model_input,
)


def ramp(rows: int, cols: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return np.linspace(low, high, rows * cols, dtype=np.float32).reshape(rows, cols)


@pytest.mark.parametrize(
    ("rows", "cols", "size"), [(64, 64, 32), (100, 200, 64), (300, 120, 224), (50, 50, 50)]
)
def test_prepare_image_shape_and_dtype(rows: int, cols: int, size: int) -> None:
    out = prepare_image(ramp(rows, cols), size)
    assert out.shape == (size, size)
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255


def test_prepare_image_upscales_small_input() -> None:
    out = prepare_image(ramp(16, 16), 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8


def test_prepare_image_non_square_is_padded_not_stretched() -> None:
    pixels = np.full((100, 200), 0.2, dtype=np.float32)
    pixels[40:60, 40:160] = 0.8  # a 20 x 120 bar: aspect 6
    out = prepare_image(pixels, 100)
    # Padded to 200 x 200 (50 rows above and below), then halved: the bar is rows 45..55,
    # columns 20..80, still 10 x 60; a stretch to square would make it 20 rows tall.
    bright = np.argwhere(out == 255)
    assert bright.min(axis=0).tolist() == [45, 20]
    assert bright.max(axis=0).tolist() == [54, 79]
    assert len(bright) == 10 * 60
    # The padding takes the border (background) value, not black or white.
    assert np.all(out[:25] == 0) and np.all(out[75:] == 0)
    assert set(np.unique(out).tolist()) == {0, 255}


def test_prepare_image_tall_input_is_padded_left_and_right() -> None:
    pixels = np.full((200, 100), 0.3, dtype=np.float32)
    pixels[40:160, 40:60] = 0.9  # a 120 x 20 vertical bar
    out = prepare_image(pixels, 100)
    bright = np.argwhere(out == 255)
    assert bright.min(axis=0).tolist() == [20, 45]
    assert bright.max(axis=0).tolist() == [79, 54]


def test_prepare_image_percentile_stretch_ignores_few_saturated_pixels() -> None:
    pixels = ramp(200, 200, 0.2, 0.6)
    rng = np.random.default_rng(0)
    marker = rng.choice(200 * 200, size=20, replace=False)  # 0.05 % of the pixels
    pixels.ravel()[marker] = 1.0
    out = prepare_image(pixels, 200)
    body = np.delete(out.ravel(), marker)
    # A min-max stretch would put the top of the ramp at (0.6 - 0.2) / 0.8 * 255 = 127.
    assert body.max() == 255
    assert body.min() == 0
    assert np.median(body) == pytest.approx(127.5, abs=2)
    assert np.all(out.ravel()[marker] == 255)


def test_prepare_image_constant_input_does_not_divide_by_zero() -> None:
    out = prepare_image(np.full((40, 60), 0.5, dtype=np.float32), 32)
    assert out.shape == (32, 32) and np.all(out == 0)


def test_prepare_image_is_deterministic_and_leaves_input_untouched() -> None:
    pixels = np.random.default_rng(1).random((120, 90), dtype=np.float32)
    before = pixels.copy()
    first, second = prepare_image(pixels, 64), prepare_image(pixels, 64)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(pixels, before)
    # A non-contiguous view gives the same result as its contiguous copy.
    np.testing.assert_array_equal(
        prepare_image(pixels.T, 64), prepare_image(np.ascontiguousarray(pixels.T), 64)
    )


def test_prepare_image_rejects_non_2d_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        prepare_image(np.zeros((3, 32, 32), dtype=np.float32), 32)


def test_to_model_input_shapes() -> None:
    single = np.zeros((32, 32), dtype=np.uint8)
    batch = np.zeros((5, 32, 32), dtype=np.uint8)
    assert to_model_input(single).shape == (1, 1, 32, 32)
    assert to_model_input(batch).shape == (5, 1, 32, 32)
    assert to_model_input(batch).dtype == np.float32


def test_to_model_input_maps_with_fixed_mean_and_std() -> None:
    images = np.array([[[0, 255], [128, 64]]], dtype=np.uint8)
    x = to_model_input(images)
    expected = (images[:, None] / 255.0 - MODEL_INPUT_MEAN) / MODEL_INPUT_STD
    np.testing.assert_allclose(x, expected, atol=1e-6)
    assert x[0, 0, 0, 0] == pytest.approx(-2.0) and x[0, 0, 0, 1] == pytest.approx(2.0)
