"""The monitoring features of scored images: one table layout for reference and current data.

Every scored image becomes one row of PHI-free features, whoever scores it: the ``package``
stage (the reference: val/test images), the service (each prediction, appended to the
prediction log) and ``cxr-triage monitor`` on a folder. Drift reports compare such tables, so
they must come from this one function.

Columns:

- image statistics of the image the model sees (:data:`IMAGE_STAT_COLUMNS`), plus the original
  size and bit depth from the file (:data:`ACQUISITION_COLUMNS`);
- metadata where known (:data:`METADATA_COLUMNS`, "unknown" otherwise);
- the prediction (``prob_abnormal``, ``label``);
- an embedding summary: the embedding projected on the package's first principal components
  (``emb_0``...) and its norm (``emb_norm``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.evaluation.fairness import age_band

__all__ = [
    "ACQUISITION_COLUMNS",
    "IMAGE_STAT_COLUMNS",
    "METADATA_COLUMNS",
    "PREDICTION_COLUMNS",
    "UNKNOWN",
    "embedding_columns",
    "image_statistics",
    "monitoring_frame",
    "monitoring_rows",
    "monitoring_columns",
]

IMAGE_STAT_COLUMNS = (
    "img_mean",
    "img_std",
    "img_p05",
    "img_p50",
    "img_p95",
    "img_entropy",
    "img_sharpness",
    "img_noise",
)
ACQUISITION_COLUMNS = ("orig_rows", "orig_cols", "bits_stored")
METADATA_COLUMNS = (
    "site",
    "manufacturer",
    "view_position",
    "sex",
    "age_band",
    "modality",
    "photometric",
)
PREDICTION_COLUMNS = ("prob_abnormal", "label")
UNKNOWN = "unknown"
_HIST_BINS = 64


def embedding_columns(n_components: int) -> list[str]:
    """Names of the embedding summary columns: ``emb_0``... then ``emb_norm``."""
    return [f"emb_{i}" for i in range(n_components)] + ["emb_norm"]


def monitoring_columns(n_components: int) -> list[str]:
    """Every column of :func:`monitoring_frame`, in order."""
    return [
        *IMAGE_STAT_COLUMNS,
        *ACQUISITION_COLUMNS,
        *METADATA_COLUMNS,
        *PREDICTION_COLUMNS,
        *embedding_columns(n_components),
    ]


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Intensity, texture and noise statistics of prepared images.

    Computed on the ``uint8`` images the model sees (after :func:`prepare_image`), so that they
    describe model input whatever the file format: a noisier detector, a harder contrast curve
    or a different resolution changes them even after the contrast stretch.

    Args:
        images: ``uint8`` ``(N, S, S)``.

    Returns:
        One float64 array of length N per name in :data:`IMAGE_STAT_COLUMNS`.
    """
    x = np.asarray(images, dtype=np.float32).reshape(len(images), images.shape[-2], -1) / 255.0
    flat = x.reshape(len(x), -1)
    p05, p50, p95 = np.percentile(flat, [5, 50, 95], axis=1)
    counts = np.stack([np.bincount(row, minlength=256) for row in images.reshape(len(x), -1)])
    binned = counts.reshape(len(x), _HIST_BINS, -1).sum(axis=2) / flat.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(binned > 0, binned * np.log2(binned), 0.0).sum(axis=1)
    # Mean gradient magnitude: edges and structure (blur lowers it).
    gx, gy = np.abs(np.diff(x, axis=2)), np.abs(np.diff(x, axis=1))
    sharpness = 0.5 * (gx.mean(axis=(1, 2)) + gy.mean(axis=(1, 2)))
    # Median absolute Laplacian: robust to edges, dominated by pixel noise.
    lap = (
        4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    )
    noise = np.median(np.abs(lap).reshape(len(x), -1), axis=1)
    return {
        "img_mean": flat.mean(axis=1, dtype=np.float64),
        "img_std": flat.std(axis=1, dtype=np.float64),
        "img_p05": p05.astype(np.float64),
        "img_p50": p50.astype(np.float64),
        "img_p95": p95.astype(np.float64),
        "img_entropy": entropy.astype(np.float64),
        "img_sharpness": sharpness.astype(np.float64),
        "img_noise": noise.astype(np.float64),
    }


def _category(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return UNKNOWN
    text = str(value).strip()
    return text if text and text.lower() not in ("nan", "none") else UNKNOWN


def monitoring_rows(
    images: np.ndarray,
    *,
    summary: np.ndarray,
    prob_abnormal: np.ndarray,
    labels: Sequence[str],
    metadata: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One row (a dict of plain Python values) of monitoring features per scored image.

    Plain dicts, not a DataFrame: the service builds one per request, and pandas would cost
    more than the statistics themselves.

    Args:
        images: the prepared ``uint8`` images ``(N, S, S)``.
        summary: the embedding summary ``(N, k + 1)``: k projections then the norm.
        prob_abnormal: calibrated probabilities ``(N,)``.
        labels: ``normal`` / ``abnormal`` at the threshold.
        metadata: per image, any of ``site``, ``manufacturer``, ``view_position``, ``sex``,
            ``age`` (years; banded here, never stored), ``modality``, ``photometric``,
            ``orig_rows``, ``orig_cols``, ``bits_stored``. Anything else is ignored, so
            identifiers can never reach the table.

    Returns:
        Rows with the keys of :func:`monitoring_columns`, in that order.
    """
    n = len(images)
    if not (len(summary) == len(prob_abnormal) == len(labels) == len(metadata) == n):
        raise ValueError("images, summary, probabilities, labels and metadata differ in length")
    if n == 0:
        return []
    stats = {k: v.tolist() for k, v in image_statistics(images).items()}
    summary = np.asarray(summary, dtype=np.float64).reshape(n, -1)
    emb_names = embedding_columns(summary.shape[1] - 1)
    probs = np.asarray(prob_abnormal, dtype=np.float64).tolist()
    rows = []
    for i, meta in enumerate(metadata):
        row: dict[str, Any] = {c: stats[c][i] for c in IMAGE_STAT_COLUMNS}
        row.update({c: float(meta.get(c) or np.nan) for c in ACQUISITION_COLUMNS})
        for column in METADATA_COLUMNS:
            row[column] = (
                age_band(meta.get("age")) if column == "age_band" else _category(meta.get(column))
            )
        row["prob_abnormal"] = probs[i]
        row["label"] = labels[i]
        row.update(zip(emb_names, summary[i].tolist(), strict=True))
        rows.append(row)
    return rows


def monitoring_frame(
    images: np.ndarray,
    *,
    summary: np.ndarray,
    prob_abnormal: np.ndarray,
    labels: Sequence[str],
    metadata: Sequence[Mapping[str, Any]],
) -> pd.DataFrame:
    """:func:`monitoring_rows` as a table (same arguments), columns in :func:`monitoring_columns`
    order."""
    rows = monitoring_rows(
        images, summary=summary, prob_abnormal=prob_abnormal, labels=labels, metadata=metadata
    )
    k = np.asarray(summary).reshape(len(images), -1).shape[1] - 1 if len(images) else 0
    return pd.DataFrame(rows, columns=monitoring_columns(k))
