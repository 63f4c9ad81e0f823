"""Seed variance in the open: one comparison per seed, summarised as mean, sd and range.

A seed moves everything a run draws: the patient split (so the test split itself), the CV
folds, initial weights, augmentation and bootstrap resamples. :func:`summarise_seeds` reports
how much the headline figures move with it, so a single run's number is never mistaken for
the model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SEED_METRICS", "seeds_markdown", "summarise_seeds"]

# (key in a run's record, label): the winner's held-out test figures at its operating point,
# the cross-validated headline, the backbone's measured label leak (compare.
# fold_pretraining_repeats) and the selection's optimism.
SEED_METRICS: tuple[tuple[str, str], ...] = (
    ("test_auroc", "test AUROC"),
    ("test_ece", "test ECE"),
    ("test_sensitivity", "test sensitivity"),
    ("test_specificity", "test specificity"),
    ("cv_auroc", "CV AUROC (train+val)"),
    ("cv_auroc_fold_pretrained", "CV AUROC, backbone re-pretrained per fold"),
    ("cv_auroc_label_leak", "backbone label leak (CV AUROC)"),
    ("bbc_auroc", "BBC-CV AUROC"),
    ("bbc_optimism", "optimism (BBC-CV)"),
    ("nested_auroc", "nested-CV AUROC (zoo)"),
    ("nested_optimism", "optimism (nested CV, zoo)"),
)


def summarise_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of each metric over seeds.

    Args:
        runs: one record per seed: ``seed``, ``winner`` and the :data:`SEED_METRICS` keys
            (missing or non-finite values are left out of that metric's figures).

    Returns:
        ``{"n_seeds", "seeds", "winners", "metrics": {key: {mean, sd, min, max, n}}}``; ``sd``
        is NaN with fewer than two values.
    """
    metrics: dict[str, dict[str, float]] = {}
    for key, _ in SEED_METRICS:
        values = np.array(
            [float(r[key]) for r in runs if r.get(key) is not None and math.isfinite(r[key])]
        )
        if values.size == 0:
            continue
        metrics[key] = {
            "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if values.size > 1 else math.nan,
            "min": float(values.min()),
            "max": float(values.max()),
            "n": int(values.size),
        }
    winners: dict[str, int] = {}
    for r in runs:
        winners[str(r.get("winner"))] = winners.get(str(r.get("winner")), 0) + 1
    return {
        "n_seeds": len(runs),
        "seeds": [r.get("seed") for r in runs],
        "winners": winners,
        "metrics": metrics,
    }


def seeds_markdown(summary: dict[str, Any], runs: Sequence[dict[str, Any]], note: str) -> str:
    """The summary and every run as Markdown (``reports/seeds/<name>/summary.md``)."""
    lines = [
        f"Seed variance over {summary['n_seeds']} seeds ({note}). Winners: "
        + ", ".join(f"{k} {v}x" for k, v in summary["winners"].items())
        + ".",
        "",
        "| metric | mean ± sd | range |",
        "|---|---:|---:|",
    ]
    for key, label in SEED_METRICS:
        m = summary["metrics"].get(key)
        if m:
            lines.append(
                f"| {label} | {m['mean']:.3f} ± {m['sd']:.3f} | {m['min']:.3f} - {m['max']:.3f} |"
            )
    keys = [k for k, _ in SEED_METRICS if k in summary["metrics"]]
    lines += [
        "",
        "| seed | winner | " + " | ".join(keys) + " |",
        "|---|---|" + "---:|" * len(keys),
    ]
    for r in runs:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else "" for k in keys]
        lines.append(f"| {r.get('seed')} | {r.get('winner')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
