"""Time one drift report (``check_drift``) on 10k current vs 10k reference rows.

The target: the whole run (column drift report, embedding drift report and its calibration,
HTML, workspace) in at most 30 s on 2 cores. Run as::

    python benchmarks/bench_drift.py                                   # models/package
    python benchmarks/bench_drift.py --reference models/package/reference.parquet --n 10000

Rows keep the real column layout: they are drawn with replacement from a real package
reference, with Gaussian noise (``--noise`` reference standard deviations) on every numeric
column. Two current sets are timed: one drawn like the reference (expect no drift), and a
shifted one (image statistics and embedding summary moved by ``--shift`` standard deviations, a
new vendor with 16-bit, larger images: expect drift). The first run also calibrates the
embedding threshold (cached for the second run), so its breakdown shows that cost.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_triage.config import load_params
from cxr_triage.inference.features import IMAGE_STAT_COLUMNS
from cxr_triage.inference.layout import PACKAGE_FILE, REFERENCE_FILE

logger = logging.getLogger("bench_drift")

TARGET_SECONDS = 30.0


def synthesise(
    reference: pd.DataFrame, n: int, *, noise: float, shift: float, seed: int
) -> pd.DataFrame:
    """``n`` rows resampled from ``reference`` with noise; ``shift`` > 0 moves the acquisition."""
    rng = np.random.default_rng(seed)
    rows = reference.iloc[rng.integers(0, len(reference), n)].reset_index(drop=True)
    numeric = [c for c in rows.columns if pd.api.types.is_float_dtype(rows[c])]
    for column in numeric:
        std = float(reference[column].std()) or 1.0
        rows[column] = rows[column] + rng.normal(0.0, noise * std, n)
    if shift:
        moved = [*IMAGE_STAT_COLUMNS, *(c for c in rows.columns if c.startswith("emb_"))]
        for column in moved:
            rows[column] = rows[column] + shift * (float(reference[column].std()) or 1.0)
        rows["orig_rows"], rows["orig_cols"], rows["bits_stored"] = 768.0, 768.0, 16.0
        rows["manufacturer"] = "Contoso Imaging"
    return rows


def main() -> None:
    """Parse arguments, build the row sets, time two monitoring runs and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--reference", type=Path, help="a reference.parquet (default: paths.package_dir's)"
    )
    parser.add_argument("--n", type=int, default=10_000, help="rows per side")
    parser.add_argument("--noise", type=float, default=0.1, help="noise, in reference std")
    parser.add_argument("--shift", type=float, default=0.5, help="shift, in reference std")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("cxr_triage").setLevel(logging.WARNING)

    params = load_params(args.params)
    source = args.reference or Path(params.paths.package_dir) / REFERENCE_FILE
    if not source.is_file():
        raise SystemExit(f"{source} not found: run `dvc repro package` or pass --reference")
    real = pd.read_parquet(source).drop(columns=["split", "y_true"], errors="ignore")

    start = time.perf_counter()
    # Timed apart: a long-running flow or server imports Evidently once.
    import evidently.metrics  # noqa: F401
    import evidently.presets  # noqa: F401
    import evidently.ui.workspace  # noqa: F401

    from cxr_triage.monitoring import CurrentData, check_drift

    import_s = time.perf_counter() - start
    work = Path(tempfile.mkdtemp(prefix="bench_drift-"))
    try:
        package = work / "package"
        package.mkdir()
        info = source.parent / PACKAGE_FILE  # the package the reference comes with
        if not info.is_file():
            raise SystemExit(f"{info} not found: --reference must lie in a package folder")
        shutil.copy(info, package / PACKAGE_FILE)
        reference = synthesise(real, args.n, noise=args.noise, shift=0, seed=args.seed)
        reference.to_parquet(package / REFERENCE_FILE, index=False)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        logger.info(
            "drift report: %d current vs %d reference rows x %d columns (from %d real rows of "
            "%s), %s cores; Evidently import %.1f s (not counted)",
            args.n,
            args.n,
            reference.shape[1],
            len(real),
            source,
            cores,
            import_s,
        )
        header = ("current", "verdict", "total", "columns", "calib", "embed", "merge", "html")
        logger.info("%-9s %-9s %7s %7s %7s %7s %7s %7s %9s  %s", *header, "workspace", "html MB")
        totals = []
        for name, shift, seed in (("same", 0.0, args.seed + 1), ("shifted", args.shift, 2)):
            current = synthesise(real, args.n, noise=args.noise, shift=shift, seed=seed)
            begin = time.perf_counter()
            result = check_drift(
                params, CurrentData(current), package=package, out_dir=work / "monitor"
            )
            wall = time.perf_counter() - begin
            totals.append(wall)
            t = result.timings_s
            logger.info(
                "%-9s %-9s %7.1f %7.1f %7.1f %7.1f %7.1f %7.1f %9.1f  %.1f",
                name,
                result.status,
                wall,
                t["column_drift"],
                t["embedding_calibration"],
                t["embedding_drift"],
                t["merge"],
                t["html"],
                t["workspace"],
                result.html_path.stat().st_size / 2**20,
            )
            logger.info("  %s", result.one_line())
        worst = max(totals)
        logger.info(
            "slowest run: %.1f s; target %.0f s; ratio %.2f (%s); load average: %s",
            worst,
            TARGET_SECONDS,
            worst / TARGET_SECONDS,
            "within target" if worst <= TARGET_SECONDS else "OVER target",
            " ".join(f"{value:.1f}" for value in os.getloadavg()),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
