"""Measures of saliency maps: do they point at the lesion, do they track the score, do they depend
on the model? Pure numpy on maps and masks; the maps themselves come from
:mod:`cxr_triage.inference.explain`.

Localisation follows the chest X-ray saliency benchmark of Saporta et al. (Nature Machine
Intelligence 4, 867-878, 2022; "Benchmarking saliency methods for chest X-ray interpretation"):

* **hit rate** (their "hit rate", the pointing game of Zhang et al. 2018): the map's maximum lies
  inside the ground-truth region;
* **IoU** of the map binarised with Otsu's threshold (Otsu 1979, as in that benchmark) and the
  ground-truth region; mIoU is its mean over images.

Faithfulness follows the deletion and insertion metrics of RISE (Petsiuk, Das and Saenko, BMVC
2018): pixels are removed from (or inserted into) the image in the map's order, most salient
first, and the area under the model's probability curve is taken over the removed fraction. A
faithful map gives a *low* deletion AUC and a *high* insertion AUC compared with a random order.

Sanity is the model-randomisation test of Adebayo et al. ("Sanity checks for saliency maps",
NeurIPS 2018): the Spearman rank correlation between a map and the map of the same image after
the network's weights are randomised; a map that does not change is not explaining the model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import spearmanr

__all__ = [
    "curve_auc",
    "deletion_insertion_steps",
    "hit",
    "iou",
    "otsu_threshold",
    "rank_correlation",
    "two_lung_baseline",
]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (maximises the between-class variance of a histogram).

    Args:
        values: any array of finite numbers (a saliency map).
        bins: histogram bins over [min, max].

    Returns:
        The threshold; values ``>=`` it are the foreground. For a constant map, that constant.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(v.min()), float(v.max())
    if high <= low:
        return low
    counts, edges = np.histogram(v, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(counts * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    # The split after bin i puts bins 0..i in the background: threshold at the next bin's edge.
    return float(edges[int(np.argmax(between[:-1])) + 1])


def hit(saliency: np.ndarray, region: np.ndarray) -> bool:
    """Whether the map's maximum (the first, in raster order, on ties) lies inside ``region``.

    Args:
        saliency: ``(H, W)`` map.
        region: ``(H, W)`` boolean ground truth (a lesion mask, or a filled box).
    """
    saliency, region = _same_shape(saliency, region)
    return bool(region.ravel()[int(np.argmax(saliency))])


def iou(saliency: np.ndarray, region: np.ndarray) -> float:
    """IoU of the Otsu-binarised map and ``region`` (0 when both are empty is impossible here:
    the binarised map always has at least its maximum)."""
    saliency, region = _same_shape(saliency, region)
    mask = saliency >= otsu_threshold(saliency)
    union = np.logical_or(mask, region).sum()
    return float(np.logical_and(mask, region).sum() / union) if union else 0.0


def _same_shape(saliency: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    saliency = np.asarray(saliency, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if saliency.shape != region.shape or saliency.ndim != 2:
        raise ValueError(
            f"map {saliency.shape} and region {region.shape} must be equal 2-D shapes"
        )
    return saliency, region


def two_lung_baseline(size: int) -> np.ndarray:
    """The centre-of-lung baseline map ``(size, size)``: two Gaussians at the lung centres.

    A map that knows nothing about the image: one isotropic Gaussian (sigma 12% of the side) at
    the centre of each lung field of a frontal radiograph as :func:`prepare_image` frames it,
    (row 45%, column 30%) and (row 45%, column 70%) of the square. Localisation figures of a
    real map are reported beside this one's.
    """
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    sigma = 0.12
    out = np.zeros((size, size))
    for centre_col in (0.30, 0.70):
        out += np.exp(-((rows - 0.45) ** 2 + (cols - centre_col) ** 2) / (2 * sigma**2))
    return (out / out.max()).astype(np.float32)


def deletion_insertion_steps(
    image: np.ndarray,
    order: np.ndarray,
    background: np.ndarray,
    n_steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The images of a deletion and of an insertion curve.

    Args:
        image: ``(H, W)`` model input (any dtype the model takes).
        order: flat pixel indices, most salient first (a permutation of ``H * W``).
        background: ``(H, W)``: what deleted pixels become, and where insertion starts (RISE
            uses a blurred copy of the image for insertion and zeros for deletion; here one
            background serves both, so the two curves are comparable).
        n_steps: the curve has ``n_steps + 1`` points, from 0% to 100% of the pixels.

    Returns:
        ``(deletion, insertion)``, each ``(n_steps + 1, H, W)``: step ``i`` has the first
        ``round(i / n_steps * H * W)`` pixels of ``order`` deleted (resp. inserted).
    """
    image = np.asarray(image)
    height, width = image.shape
    n = height * width
    order = np.asarray(order).ravel()
    if order.size != n:
        raise ValueError(f"order has {order.size} indices for a {height}x{width} image")
    flat, back = image.ravel(), np.asarray(background, dtype=image.dtype).ravel()
    deletion = np.empty((n_steps + 1, n), dtype=image.dtype)
    insertion = np.empty_like(deletion)
    for i in range(n_steps + 1):
        chosen = order[: int(round(i / n_steps * n))]
        deletion[i] = flat
        deletion[i, chosen] = back[chosen]
        insertion[i] = back
        insertion[i, chosen] = flat[chosen]
    return deletion.reshape(-1, height, width), insertion.reshape(-1, height, width)


def curve_auc(values: np.ndarray) -> float:
    """Area under a curve sampled at equally spaced fractions 0..1 (trapezoid rule)."""
    y = np.asarray(values, dtype=np.float64).ravel()
    if y.size < 2:
        raise ValueError("a curve needs at least 2 points")
    return float(np.trapezoid(y, dx=1.0 / (y.size - 1)))


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape (NaN if one is constant)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps of different sizes: {a.size} and {b.size}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


Scorer = Callable[[np.ndarray], np.ndarray]
