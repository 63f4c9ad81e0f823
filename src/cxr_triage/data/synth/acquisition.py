"""Acquisition: a site's detector and processing turn a density map into stored pixel values."""

from __future__ import annotations

import math

import numpy as np

from cxr_triage.data.synth import portable
from cxr_triage.data.synth.cohort import ImageSpec
from cxr_triage.data.synth.fields import smooth_field
from cxr_triage.data.synth.sites import SiteProfile

__all__ = ["DENSITY_SCALE", "acquire", "blur"]

DENSITY_SCALE = 1.05  # density mapped to display value 1


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur by shifted sums (numpy only, edge-padded); sigma in pixels."""
    if sigma < 0.3:
        return img
    radius = max(1, math.ceil(2.5 * sigma))
    taps = portable.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / math.fsum(taps)).astype(np.float32)
    rows, cols = img.shape
    padded = np.pad(img, ((radius, radius), (0, 0)), mode="edge")
    out = sum(t * padded[k : k + rows] for k, t in enumerate(taps))
    padded = np.pad(out, ((0, 0), (radius, radius)), mode="edge")
    return sum(t * padded[:, k : k + cols] for k, t in enumerate(taps))


def acquire(
    density: np.ndarray, site: SiteProfile, spec: ImageSpec, rng: np.random.Generator
) -> np.ndarray:
    """Turn a density map into stored pixel values as this site's detector and processing would.

    Steps: exposure (over-exposure burns through: darker, flatter), heel effect, the processing
    curve (gamma ``site.contrast``), detector blur, signal-dependent quantum noise, then the
    stored range of ``site.bits_stored`` bits (inverted for MONOCHROME1).

    Returns:
        uint16 array of the density's shape, within ``[0, 2**bits_stored - 1]``.
    """
    rows, cols = density.shape
    v = density / DENSITY_SCALE
    v = v * (1.0 - 0.3 * (site.exposure - 1.0)) - 0.05 * (site.exposure - 1.0)
    y = ((np.arange(rows, dtype=np.float32) / rows) - 0.5)[:, None]
    heel = (0.03 * float(rng.uniform(-1, 1))) * y + 0.015 * smooth_field(rng, rows, cols, 3)
    v = portable.power(np.clip(v + heel, 0.0, 1.0), site.contrast)
    sigma = site.blur * rows / site.rows  # the detector's blur, in this image's pixels
    v = blur(v, sigma)
    noise = rng.standard_normal((rows, cols), dtype=np.float32)
    v = v + noise * (site.noise / math.sqrt(site.exposure)) * (0.5 + v)
    maxval = 2**site.bits_stored - 1
    stored = (0.04 + 0.92 * np.clip(v, 0.0, 1.0)) * maxval
    if site.photometric == "MONOCHROME1":
        stored = maxval - stored  # MONOCHROME1: high stored value = dark (air)
    return np.clip(np.rint(stored), 0, maxval).astype(np.uint16)
