"""Chest-like test images for the quality gate's unit tests (tests/unit/test_qc.py)."""

from __future__ import annotations

import numpy as np

SIDE = 64


def chest_like(n: int, seed: int) -> np.ndarray:
    """Bright mediastinum and diaphragm, two dark lung fields above, a brighter bottom band:
    an upright frontal layout with a top/bottom and a left/right structure, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    out = np.empty((n, SIDE, SIDE), dtype=np.uint8)
    for i in range(n):
        cy, dx = 0.42 + rng.normal(0, 0.03), 0.22 + rng.normal(0, 0.02)
        lungs = np.exp(-(((yy - cy) / 0.22) ** 2 + ((np.abs(xx - 0.5) - dx) / 0.12) ** 2))
        image = 0.75 - 0.55 * lungs + 0.2 * (yy > 0.8 + rng.normal(0, 0.02))
        image += rng.normal(0, 0.04, image.shape)
        out[i] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return out
