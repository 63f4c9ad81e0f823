"""Similar-case search: exact (numpy) against FAISS indexes, query time and recall@10.

Synthetic reference sets of ``N`` normalised vectors (``--dim``, default 256: the demo package's
embedding width) drawn around 1000 cluster centres (embeddings are clustered, not uniform), and
100 held-out queries from the same clusters. For each size: the exact search
(:class:`~cxr_triage.inference.similar.ExactIndex`, one matrix product, the package's search up
to ``similar.exact_max_rows``), FAISS HNSW (:class:`~cxr_triage.inference.similar.HnswIndex`,
M=32, efSearch=128, the package's search past it) and, for reference, FAISS IVF-Flat
(nlist = 4 sqrt(N), nprobe 16). Recall@10 is the share of the exact top 10 an index returns.
Prints build seconds, per-query milliseconds (one query at a time, as the service asks) and
recall@10.

    python benchmarks/bench_similar.py [--sizes 10000 1000000] [--dim 256] [--skip-hnsw-above N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from cxr_triage.inference.similar import ExactIndex, HnswIndex


def vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        x = centres[rng.integers(0, len(centres), count)]
        x = x + rng.normal(scale=0.6, size=(count, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: 1M x 256 float64 would be 2 GB
        out[start : start + 100_000] = draw(min(100_000, n - start))
    return out, draw(100)


class IvfIndex:
    """FAISS IVF-Flat on inner product (for comparison only)."""

    def __init__(self, x: np.ndarray, nprobe: int = 16) -> None:
        import faiss

        nlist = int(4 * np.sqrt(len(x)))
        quantiser = faiss.IndexFlatIP(x.shape[1])
        self.index = faiss.IndexIVFFlat(quantiser, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        sample = x[np.random.default_rng(0).choice(len(x), min(len(x), 40 * nlist), False)]
        self.index.train(sample)
        self.index.add(x)
        self.index.nprobe = nprobe

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(q), k)


def measure(index: object, queries: np.ndarray, truth: np.ndarray | None, k: int = 10):  # noqa: ANN201
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        _, idx = index.search(q[None], k)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - start)
        found.append(idx[0])
    found_arr = np.asarray(found)
    recall = (
        1.0
        if truth is None
        else float(
            np.mean([len(set(a) & set(b)) / k for a, b in zip(found_arr, truth, strict=True)])
        )
    )
    return (
        1000 * float(np.median(times)),
        1000 * float(np.percentile(times, 99)),
        recall,
        found_arr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--skip-hnsw-above", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(f"similar-case search, {args.dim}-d normalised vectors, 100 queries one at a time")
    print("| N | index | build s | query p50 ms | query p99 ms | recall@10 |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in args.sizes:
        x, queries = vectors(n, args.dim, seed=n)
        builders = [("exact (numpy)", ExactIndex), ("FAISS HNSW M=32", HnswIndex)]
        builders.append(("FAISS IVF-Flat", IvfIndex))
        truth = None
        for name, build in builders:
            if "HNSW" in name and args.skip_hnsw_above and n > args.skip_hnsw_above:
                print(f"| {n} | {name} | skipped | | | |", flush=True)
                continue
            start = time.perf_counter()
            index = build(x)
            built = time.perf_counter() - start
            p50, p99, recall, found = measure(index, queries, truth)
            if truth is None:
                truth = found
            print(
                f"| {n} | {name} | {built:.1f} | {p50:.2f} | {p99:.2f} | {recall:.3f} |",
                flush=True,
            )
            del index
    return 0


if __name__ == "__main__":
    sys.exit(main())
