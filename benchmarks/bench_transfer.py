"""Time the transfer-learning zoo (tuning included) on synthetic embeddings.

The target: the whole zoo fits 10k x 1024 embeddings in under 60 s on 2 cores. Run as::

    python benchmarks/bench_transfer.py            # 10000 x 1024, all cores
    taskset -c 0,1 python benchmarks/bench_transfer.py --n-jobs 2   # pin to 2 cores

The embeddings come from ``make_classification`` (informative plus redundant dimensions, 5% label
noise), with about four images per patient: a patient's images share its label and sit near a
patient centre, like embeddings of repeat radiographs.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
from sklearn.datasets import make_classification

from cxr_triage.evaluation.metrics import auroc
from cxr_triage.models.transfer import ZOO_NAMES, fit_zoo, predict_scores

logger = logging.getLogger("bench_transfer")

TARGET_SECONDS = 60.0


def make_embeddings(
    n: int, dim: int, images_per_patient: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic embeddings ``(X, y, groups)`` with ``n`` rows of ``dim`` float32 values."""
    n_patients = max(2, n // images_per_patient)
    X_patient, y_patient = make_classification(
        n_samples=n_patients,
        n_features=dim,
        n_informative=min(64, dim),
        n_redundant=min(64, max(0, dim - 64)),
        flip_y=0.05,
        class_sep=0.8,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_patients, size=n)
    X = X_patient[groups] + rng.normal(0, 0.5, size=(n, dim))
    return X.astype(np.float32), y_patient[groups], groups


def main() -> None:
    """Parse arguments, fit the zoo and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="train rows (images), +20%% for val")
    parser.add_argument("--dim", type=int, default=1024, help="embedding width")
    parser.add_argument("--images-per-patient", type=int, default=4)
    parser.add_argument("--n-jobs", type=int, default=-1, help="parallel candidates (-1: all)")
    parser.add_argument("--cv-folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--names", nargs="+", default=list(ZOO_NAMES), choices=ZOO_NAMES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # One draw split by patient, so that validation follows the train distribution.
    n_val = args.n // 5
    X_all, y_all, groups_all = make_embeddings(
        args.n + n_val, args.dim, args.images_per_patient, args.seed
    )
    is_val = groups_all < np.quantile(groups_all, n_val / (args.n + n_val))
    X, y, groups = X_all[~is_val], y_all[~is_val], groups_all[~is_val]
    X_val, y_val = X_all[is_val], y_all[is_val]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    logger.info(
        "zoo on %d x %d embeddings, %d patients, %s cores, n_jobs=%d",
        X.shape[0],
        X.shape[1],
        np.unique(groups).size,
        cores,
        args.n_jobs,
    )
    start = time.perf_counter()
    zoo = fit_zoo(
        X, y, groups, names=args.names, cv_folds=args.cv_folds, seed=args.seed, n_jobs=args.n_jobs
    )
    total = time.perf_counter() - start
    header = ("candidate", "fit_s", "cpu_s", "cv_auroc", "val_auroc", "params")
    logger.info("%-14s %7s %7s %9s %9s  %s", *header)
    for name, candidate in zoo.items():
        val_auroc = auroc(y_val, predict_scores(candidate, X_val))
        logger.info(
            "%-14s %7.2f %7.2f %9.4f %9.4f  %s",
            name,
            candidate.fit_seconds,
            candidate.cpu_seconds,
            candidate.cv_auroc,
            val_auroc,
            candidate.best_params,
        )
    cpu = [candidate.cpu_seconds for candidate in zoo.values()]
    # On a shared machine wall time includes waiting for the CPU; CPU seconds do not, and
    # max(sum / 2, longest) is what two otherwise idle cores need at best.
    logger.info(
        "CPU time of all candidates: %.1f s; on 2 idle cores at least %.1f s "
        "(load average at the end: %s)",
        sum(cpu),
        max(sum(cpu) / 2, max(cpu)),
        " ".join(f"{value:.1f}" for value in os.getloadavg()),
    )
    logger.info(
        "total fit time (tuning included): %.1f s; target %.0f s; ratio %.2f (%s)",
        total,
        TARGET_SECONDS,
        total / TARGET_SECONDS,
        "within target" if total <= TARGET_SECONDS else "OVER target",
    )


if __name__ == "__main__":
    main()
