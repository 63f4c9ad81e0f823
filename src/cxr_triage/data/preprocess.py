"""Deterministic preprocessing shared by training and serving (one implementation).

A decoded radiograph (float32 in [0, 1], MONOCHROME2 convention: air dark, bone bright, at its
native resolution) becomes the canonical training representation: a square ``uint8`` array of
``image_size`` pixels. Every stored dataset (``data/ingest/pixels.npy``) and every scored image
scores goes through :func:`prepare_image`; models then see :func:`to_model_input` of those arrays.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["MODEL_INPUT_MEAN", "MODEL_INPUT_STD", "prepare_image", "to_model_input"]

# Fixed (not fitted) so that the mapping can never depend on a split; stored with every model.
MODEL_INPUT_MEAN = 0.5
MODEL_INPUT_STD = 0.25
# Robust contrast stretch: a few saturated pixels (markers, wires) must not set the range.
_LOW_PERCENTILE, _HIGH_PERCENTILE = 0.5, 99.5


def prepare_image(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """Resize a decoded radiograph to the training representation.

    The image is padded to a square with its own edge value (no aspect distortion), area-resized
    (anti-aliased, so a 2048 px image keeps fine texture as averaged intensity), then contrast
    stretched between robust percentiles and quantised to ``uint8``.

    Args:
        pixels: 2-D float32 array in [0, 1], MONOCHROME2 convention.
        image_size: side of the square output.

    Returns:
        ``uint8`` array of shape ``(image_size, image_size)``.
    """
    if pixels.ndim != 2:
        raise ValueError(f"prepare_image expects a 2-D array, got shape {pixels.shape}")
    rows, cols = pixels.shape
    side = max(rows, cols)
    if rows != cols:
        # Pad with the median border value so the padding looks like the image background.
        pad_value = float(
            np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]))
        )
        square = np.full((side, side), pad_value, dtype=np.float32)
        top, left = (side - rows) // 2, (side - cols) // 2
        square[top : top + rows, left : left + cols] = pixels
        pixels = square
    if side != image_size:
        # PIL's BOX filter on mode "F" is an exact area average in C (fast, no float64 copies).
        small = np.asarray(
            Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F").resize(
                (image_size, image_size), Image.Resampling.BOX
            ),
            dtype=np.float32,
        )
    else:
        small = pixels.astype(np.float32, copy=False)
    low, high = np.percentile(small, [_LOW_PERCENTILE, _HIGH_PERCENTILE])
    scale = 255.0 / max(float(high - low), 1e-6)
    out = (small - np.float32(low)) * np.float32(scale)
    np.clip(out, 0.0, 255.0, out=out)
    return np.rint(out).astype(np.uint8)


def to_model_input(batch: np.ndarray) -> np.ndarray:
    """Map ``uint8`` images ``(B, S, S)`` or ``(S, S)`` to normalised float32 ``(B, 1, S, S)``."""
    if batch.ndim == 2:
        batch = batch[None]
    x = batch.astype(np.float32)[:, None] / np.float32(255.0)
    return (x - np.float32(MODEL_INPUT_MEAN)) / np.float32(MODEL_INPUT_STD)
