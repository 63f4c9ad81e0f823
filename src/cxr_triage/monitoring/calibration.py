"""The embedding-drift threshold, calibrated on the reference against itself (and cached).

Evidently's ``EmbeddingsDrift`` scores are method-specific and depend on the sample sizes
(STACK.md §4), so no fixed threshold fits every package and window. The threshold is the
``monitor.calibration_quantile`` quantile of the method's score over
``monitor.calibration_repeats`` random reference-vs-reference splits, times
``monitor.calibration_margin`` above the method's no-drift baseline (0, or 0.5 for the model
method's ROC AUC). The pseudo-current part has the current sample's size rounded down to a power
of two (at most half the reference), so small windows get the wider threshold they need.

Computed at the first run that needs it and cached in ``<monitor dir>/calibration/<reference
hash>.json`` (a new package has a new reference and so a new cache file).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import MonitorParams
from cxr_triage.monitoring.evidently_env import quiet

__all__ = ["METHOD_BASELINE", "drift_method", "embedding_threshold"]

log = logging.getLogger(__name__)

METHOD_BASELINE = {"mmd": 0.0, "model": 0.5, "distance": 0.0, "ratio": 0.0}
_MIN_SPREAD = 1e-4  # keeps a calibrated threshold above the baseline when every split scores it


def drift_method(name: str, threshold: float) -> Any:
    """The Evidently embedding drift method ``name`` (mmd, model, distance, ratio)."""
    from evidently.metrics.embeddings import (
        DistanceDriftMethod,
        MMDDriftMethod,
        ModelDriftMethod,
        RatioDriftMethod,
    )

    classes = {
        "mmd": MMDDriftMethod,
        "model": ModelDriftMethod,
        "distance": DistanceDriftMethod,
        "ratio": RatioDriftMethod,
    }
    return classes[name](threshold=threshold)


def embedding_threshold(
    emb_ref: pd.DataFrame,
    n_current: int,
    monitor: MonitorParams,
    *,
    seed: int,
    cache_dir: Path,
    reference_key: str,
    scope: str,
) -> dict[str, Any]:
    """The embedding threshold for this reference sample and current size (cached).

    Args:
        emb_ref: the reference's embedding columns (the sample the test uses).
        n_current: rows of the current embedding sample.
        monitor: ``params.monitor`` (method, repeats, quantile, margin).
        seed: seed of the random splits.
        cache_dir: the calibration cache folder.
        reference_key: hash of the package's reference file (the cache file name).
        scope: the reference scope (part of the cache key).

    Returns:
        ``threshold``, ``null_quantile``, ``null_max``, ``quantile``, ``margin``, ``repeats``,
        ``split_sizes``, ``cached`` and ``cache_file``.
    """
    n_pseudo = _pseudo_current_size(n_current, len(emb_ref))
    key = "|".join(
        str(v)
        for v in (
            scope,
            monitor.embedding_method,
            len(emb_ref),
            n_pseudo,
            monitor.calibration_repeats,
            monitor.calibration_quantile,
            monitor.calibration_margin,
            seed,
        )
    )
    cache_path = cache_dir / f"{reference_key}.json"
    cache = _read_cache(cache_path)
    if key in cache:
        return {**cache[key], "cached": True, "cache_file": str(cache_path)}
    scores = _null_scores(emb_ref, n_pseudo, monitor, seed)
    entry = _threshold_entry(scores, monitor, split_sizes=[len(emb_ref) - n_pseudo, n_pseudo])
    cache[key] = entry
    write_json_atomically(cache_path, cache)
    return {**entry, "cached": False, "cache_file": str(cache_path)}


def _pseudo_current_size(n_current: int, n_reference: int) -> int:
    # The current size rounded down to a power of two, at most half the reference: smaller
    # samples have noisier scores, so rounding down errs on the safe side.
    return min(2 ** int(math.log2(max(n_current, 2))), n_reference // 2)


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("ignoring an unreadable calibration cache %s", path)
        return {}


def _null_scores(
    emb_ref: pd.DataFrame, n_pseudo: int, monitor: MonitorParams, seed: int
) -> list[float]:
    """The method's score on random reference-vs-reference splits (no drift by construction)."""
    rng = np.random.default_rng(seed)
    method = drift_method(monitor.embedding_method, threshold=0.0)
    scores = []
    with quiet():
        for _ in range(monitor.calibration_repeats):
            order = rng.permutation(len(emb_ref))
            pseudo_current = emb_ref.iloc[order[:n_pseudo]].reset_index(drop=True)
            pseudo_reference = emb_ref.iloc[order[n_pseudo:]].reset_index(drop=True)
            scores.append(float(method(pseudo_current, pseudo_reference)[0]))
    return scores


def _threshold_entry(
    scores: list[float], monitor: MonitorParams, *, split_sizes: list[int]
) -> dict[str, Any]:
    baseline = METHOD_BASELINE[monitor.embedding_method]
    null_quantile = float(np.quantile(scores, monitor.calibration_quantile))
    threshold = baseline + max(null_quantile - baseline, _MIN_SPREAD) * monitor.calibration_margin
    return {
        "threshold": threshold,
        "null_quantile": null_quantile,
        "null_max": float(np.max(scores)),
        "quantile": monitor.calibration_quantile,
        "margin": monitor.calibration_margin,
        "repeats": monitor.calibration_repeats,
        "split_sizes": split_sizes,
    }
