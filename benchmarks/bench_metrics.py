"""Patient-bootstrap CIs: cost of 1000 resamples of a 2000-row AUROC, against the naive loop.

The evaluation stages compute several such CIs per candidate (compare, threshold, evaluate,
the promotion gate), so the vectorised bootstrap must stay far cheaper than resampling rows and
calling scikit-learn's ``roc_auc_score`` 1000 times, the baseline measured in the same run.

    python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.metrics import roc_auc_score

from cxr_triage.evaluation.metrics import auroc, bootstrap_ci

N_ROWS, N_PATIENTS, N_BOOT = 2000, 500, 1000


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(N_PATIENTS), N_ROWS // N_PATIENTS)
    y_true = rng.integers(0, 2, size=N_ROWS)
    y_score = rng.random(N_ROWS)

    def ours() -> None:
        bootstrap_ci(auroc, y_true, y_score, groups, n_boot=N_BOOT, seed=0)

    def naive() -> None:
        patients = np.unique(groups)
        rows = {p: np.flatnonzero(groups == p) for p in patients}
        draw = np.random.default_rng(0)
        for _ in range(N_BOOT):
            picked = np.concatenate([rows[p] for p in draw.choice(patients, len(patients))])
            roc_auc_score(y_true[picked], y_score[picked])

    t_ours, t_naive = _best_of(ours), _best_of(naive, repeats=1)
    print(f"patient bootstrap, {N_BOOT} resamples x {N_ROWS} rows ({N_PATIENTS} patients)")
    print(f"  bootstrap_ci(auroc):          {t_ours:.3f} s")
    print(f"  naive loop (roc_auc_score):   {t_naive:.3f} s")
    print(f"  ratio ours / naive:           {t_ours / t_naive:.3f}")


if __name__ == "__main__":
    main()
