"""Numeric building blocks of the renderer: soft steps and smooth random fields (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["ramp", "smooth_field"]


def ramp(z: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 (z <= -width/2) to 1 (z >= width/2); cheaper than a sigmoid."""
    return np.clip(0.5 + z / width, 0.0, 1.0)


def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour index and weight for linear interpolation of n_in points onto n_out."""
    pos = (np.arange(n_out, dtype=np.float32) + 0.5) * np.float32((n_in - 1) / n_out)
    lo = np.minimum(pos.astype(np.int64), n_in - 2)
    return lo, (pos - lo).astype(np.float32)


def smooth_field(rng: np.random.Generator, rows: int, cols: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field with about ``cells`` features across the image.

    Returns:
        float32 array of shape ``(rows, cols)``.
    """
    h = max(3, round(cells * rows / max(rows, cols)) + 2)
    w = max(3, round(cells * cols / max(rows, cols)) + 2)
    small = rng.standard_normal((h, w)).astype(np.float32)
    # Separable linear upsampling by gathers, not BLAS: BLAS threads crawl on a busy machine and
    # their summation order may differ between machines, which would break byte-identity.
    lo, frac = _interp_weights(rows, h)
    tall = small[lo] * (1 - frac)[:, None] + small[lo + 1] * frac[:, None]
    lo, frac = _interp_weights(cols, w)
    return tall[:, lo] * (1 - frac) + tall[:, lo + 1] * frac
