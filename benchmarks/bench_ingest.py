"""Ingest throughput against the decode rate and the least-preprocessing limit.

On synthetic 2048x2048 CR/DX DICOMs (16-bit container, BitsStored 12..16, smooth content plus
noise, invented identities only), once uncompressed (Explicit VR Little Endian) and once as
JPEG 2000 Lossless, this prints in images/s:

- bare decode: ``pydicom.dcmread(p).pixel_array``, in one process and over a 2-process pool;
- the limit: decode plus the least preprocessing any reader must do (float32 window and
  invert as one astype + multiply-add + clip, one area resize to the training size with PIL's
  BOX filter on mode "F") over a pool that is already started, so the limit is an upper bound;
  it is run with glibc's default malloc and with large freed buffers kept in the heap
  (``mallopt``; otherwise every 8-16 MiB buffer costs fresh, page-faulting ``mmap`` pages), and
  the faster of the two is the limit;
- ingest: ``ingest(discover("dicom", dir), out, ...)`` end to end, wall clock including pool
  start-up and writing the outputs;
- for reference, pydicom's own ``apply_modality_lut`` + ``apply_voi_lut`` on decoded arrays.

Target: ingest >= 0.8 x the limit for both syntaxes (a PASS/MISS line each). CPU seconds per image
(all processes) are printed too: on a machine shared with other jobs, wall-clock figures move by
tens of per cent between runs, CPU time much less. Generating the files
is not timed; the file cache is warmed before timing and each figure is the best of ``--repeat``.

    python benchmarks/bench_ingest.py                      # 48 uncompressed + 16 JPEG 2000
    python benchmarks/bench_ingest.py --n 32 --keep /tmp/cxr-bench   # reuse the files next time
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from cxr_triage.data.ingest import ingest
from cxr_triage.data.sources import discover
from cxr_triage.data.synth.dicom import image_dataset

SYNTAXES = {"explicit": ExplicitVRLittleEndian, "j2k": JPEG2000Lossless}
LABELS = {"explicit": "Explicit VR LE", "j2k": "JPEG 2000 Lossless"}
TARGET = 0.8
SALT = "benchmark-salt-not-a-secret-0123456789"
FORMAT_VERSION = 1  # bump when the generated files change, so --keep folders are regenerated


# --------------------------------------------------------------------------------------------
# Synthetic files (not timed)
# --------------------------------------------------------------------------------------------


def synthetic_pixels(size: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth chest-like field plus noise, as unsigned integers of ``bits`` stored bits."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j].astype(np.float32)
    field = 0.55 + 0.25 * x * rng.uniform(-1, 1) + 0.15 * y * rng.uniform(-1, 1)  # heel effect
    for cx in (-0.45, 0.45):  # two "lungs": darker ellipses with soft edges
        r2 = ((x - cx - rng.uniform(-0.05, 0.05)) / 0.3) ** 2 + ((y + 0.05) / 0.6) ** 2
        field -= 0.3 * np.exp(-(r2**2))
    field += 0.2 * np.exp(-((x / 0.12) ** 2))  # "spine"
    field += 0.05 * np.sin(y * rng.uniform(20, 30)) * np.exp(-(((np.abs(x) - 0.45) / 0.3) ** 2))
    top = float(2**bits - 1)
    noise = rng.standard_normal((size, size), dtype=np.float32) * np.float32(0.01)
    values = np.clip((field + noise) * top, 0, top)
    return values.astype(np.uint16)


def write_file(path: Path, pixels: np.ndarray, bits: int, index: int, syntax: str) -> None:
    """Even indices DX (MONOCHROME2), odd CR (MONOCHROME1: half the files exercise inversion)."""
    modality = "DX" if index % 2 == 0 else "CR"
    top = 2**bits - 1
    ds = image_dataset(
        pixels,
        modality=modality,
        photometric="MONOCHROME1" if modality == "CR" else "MONOCHROME2",
        bits_stored=bits,
        attributes={
            "PatientName": "Benchmark^Synthetic",
            "PatientID": f"BENCH{index:05d}",
            "BodyPartExamined": "CHEST",
            "ViewPosition": "PA",
            "RescaleIntercept": 0,
            "RescaleSlope": 1,
            "WindowCenter": round(0.5 * top),
            "WindowWidth": round(0.8 * top),
        },
    )
    if syntax == "j2k":
        ds.compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)


def make_dataset(root: Path, counts: dict[str, int], size: int) -> dict[str, list[Path]]:
    """``root/<syntax>/img_XXXX.dcm``; a syntax is reused when ``root/<syntax>.json`` matches."""
    for syntax, n in counts.items():
        spec = {"version": FORMAT_VERSION, "size": size, "n": n}
        marker = root / f"{syntax}.json"
        if marker.exists() and json.loads(marker.read_text()) == spec:
            print(f"reusing {n} {syntax} files in {root}")
            continue
        shutil.rmtree(root / syntax, ignore_errors=True)
        (root / syntax).mkdir(parents=True)
        t0 = time.perf_counter()
        rng = np.random.default_rng(20240601)  # same pixels for both syntaxes
        for i in range(n):
            bits = 12 + i % 5  # BitsStored 12..16 in a 16-bit container
            pixels = synthetic_pixels(size, bits, rng)
            write_file(root / syntax / f"img_{i:04d}.dcm", pixels, bits, i, syntax)
        marker.write_text(json.dumps(spec))
        seconds = time.perf_counter() - t0
        print(f"generated {n} {syntax} {size}x{size} files in {seconds:.0f} s (not timed)")
    out = {s: sorted((root / s).glob("*.dcm")) for s in counts}
    for syntax, paths in out.items():
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
        print(f"  {syntax:8s}: {len(paths)} files, {mb:.1f} MiB each on average")
    return out


# --------------------------------------------------------------------------------------------
# Workloads (module-level so that pool workers can run them)
# --------------------------------------------------------------------------------------------

_IMAGE_SIZE = 128


def tune_malloc() -> bool:
    """Keep freed large buffers in glibc's heap instead of unmapping them.

    By default glibc serves allocations above a (dynamic) threshold with fresh ``mmap`` pages
    and returns them on ``free``; every 8-16 MiB buffer of a 2048x2048 image (file bytes,
    decoded array, float32 copy, PIL image) then costs thousands of minor page faults. The
    limit is computed with and without this tuning; the faster figure is the limit.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 256 << 20) == 1
    return ok and libc.mallopt(m_trim_threshold, 1 << 30) == 1


def bare_decode(path: Path) -> float:
    t0 = time.process_time()
    pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the point
    return time.process_time() - t0


def least_preprocessing(path: Path) -> np.ndarray:
    """Decode, window and invert (one astype + multiply-add + clip), one area resize."""
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    lower = center - 0.5 - (width - 1) / 2  # DICOM LINEAR window, as ingest does
    span = max(width - 1, 1e-6)
    a, b = slope / span, (intercept - lower) / span
    if ds.PhotometricInterpretation == "MONOCHROME1":
        a, b = -a, 1.0 - b
    out = stored.astype(np.float32)
    out *= np.float32(a)
    out += np.float32(b)
    np.clip(out, 0.0, 1.0, out=out)
    small = Image.fromarray(out, mode="F").resize((_IMAGE_SIZE, _IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


def _limit_task(path: Path) -> tuple[np.ndarray, float]:
    t0 = time.process_time()
    small = least_preprocessing(path)
    return small, time.process_time() - t0


def _init_limit_worker(size: int, malloc: bool) -> None:
    global _IMAGE_SIZE
    _IMAGE_SIZE = size
    if malloc:
        tune_malloc()


def _noop(_: object) -> None:
    return None


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def warm_cache(paths: Sequence[Path]) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def _cpu() -> float:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(
    syntax: str, paths: list[Path], args: argparse.Namespace, scratch: Path
) -> dict[str, float]:
    """Best wall-clock rate (images/s) and least CPU seconds per image of each workload.

    The pooled workloads and ingest are interleaved within each repeat, so that a machine
    shared with other jobs slows them alike; CPU seconds per image (summed over processes) are
    reported too because they depend much less on such neighbours than wall clock does.
    """
    n, rep = len(paths), args.repeat
    warm_cache(paths)
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def keep(key: str, seconds: float, cpu_seconds: float) -> None:
        wall[key] = min(wall.get(key, float("inf")), seconds)
        cpu[key] = min(cpu.get(key, float("inf")), cpu_seconds)

    for _ in range(rep):  # one process, in this (untuned) process
        t0, c0 = time.perf_counter(), _cpu()
        for p in paths:
            bare_decode(p)
        keep("bare_1p", time.perf_counter() - t0, _cpu() - c0)

    ctx = mp.get_context("fork")
    src, out = paths[0].parent, scratch / f"ingest-{syntax}"
    t0 = time.perf_counter()
    with (
        ctx.Pool(args.workers, _init_limit_worker, (args.image_size, False)) as plain,
        ctx.Pool(args.workers, _init_limit_worker, (args.image_size, True)) as tuned,
    ):
        for pool in (plain, tuned):  # workers up (and modules warm) before any timing
            pool.map(_noop, range(args.workers * 4), chunksize=1)
        pool_start = (time.perf_counter() - t0) / 2
        for _ in range(rep):
            for key, pool, task in (
                ("bare_2p", plain, bare_decode),
                ("limit_plain", plain, _limit_task),
                ("limit_tuned", tuned, _limit_task),
            ):
                t0 = time.perf_counter()
                res = list(pool.imap_unordered(task, paths, chunksize=1))
                seconds = time.perf_counter() - t0
                keep(key, seconds, sum(r if isinstance(r, float) else r[1] for r in res))
            # ingest as shipped: forked from this process, whose malloc settings are untouched
            t0, c0 = time.perf_counter(), _cpu()
            summary = ingest(
                discover("dicom", src),
                out,
                image_size=args.image_size,
                salt=SALT,
                workers=args.workers,
                progress=False,
            )
            keep("ingest", time.perf_counter() - t0, _cpu() - c0)
            if summary.n_ingested != n:
                raise SystemExit(f"ingest accepted {summary.n_ingested} of {n}: {summary.counts}")
    shutil.rmtree(out, ignore_errors=True)

    # pydicom's own LUTs on already decoded arrays (one process), for reference.
    sample = paths[: min(n, 6)]
    decoded = [(ds, ds.pixel_array) for ds in (pydicom.dcmread(p) for p in sample)]
    for _ in range(rep):
        t0, c0 = time.perf_counter(), _cpu()
        for ds, arr in decoded:
            apply_voi_lut(apply_modality_lut(arr, ds), ds, index=0).astype(np.float32)
        keep("pydicom_lut_1p", (time.perf_counter() - t0) * n / len(sample), 0.0)
    del decoded

    r = {k: n / v for k, v in wall.items()}
    r.update({f"cpu_{k}": 1000 * v / n for k, v in cpu.items()})
    r["n"], r["pool_start_s"] = n, pool_start
    r["limit"] = max(r["limit_plain"], r["limit_tuned"])
    r["cpu_limit"] = min(r["cpu_limit_plain"], r["cpu_limit_tuned"])
    r["r_ingest_limit"] = r["ingest"] / r["limit"]
    r["r_cpu"] = r["cpu_limit"] / r["cpu_ingest"]
    r["r_limit_bare"] = r["limit"] / r["bare_2p"]
    r["r_lut_bare"] = r["pydicom_lut_1p"] / r["bare_1p"]
    return r


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> bool:
    w = args.workers
    rows = [
        ("images", "n", "{:.0f}"),
        ("bare decode, 1 process", "bare_1p", "{:.1f}"),
        (f"bare decode, {w} processes  [bare]", "bare_2p", "{:.1f}"),
        (f"decode+window+resize, {w} proc, default malloc", "limit_plain", "{:.1f}"),
        (f"decode+window+resize, {w} proc, tuned malloc", "limit_tuned", "{:.1f}"),
        ("  limit = the faster of the two", "limit", "{:.1f}"),
        (f"ingest end to end, workers={w}", "ingest", "{:.1f}"),
        ("pydicom modality+VOI LUT alone, 1 proc", "pydicom_lut_1p", "{:.1f}"),
        ("ratio ingest / limit  (target >= 0.80)", "r_ingest_limit", "{:.2f}"),
        ("ratio limit / bare", "r_limit_bare", "{:.2f}"),
        ("ratio pydicom LUT / bare decode (1 proc)", "r_lut_bare", "{:.2f}"),
        ("CPU ms/img: bare decode (1 proc)", "cpu_bare_1p", "{:.1f}"),
        ("CPU ms/img: limit, default / tuned malloc", ("cpu_limit_plain", "cpu_limit_tuned"), ""),
        ("CPU ms/img: ingest (all processes)", "cpu_ingest", "{:.1f}"),
        ("CPU ratio limit / ingest", "r_cpu", "{:.2f}"),
        ("pool start (s), excluded from the limit", "pool_start_s", "{:.3f}"),
    ]

    def cell(res: dict[str, float], key: str | tuple[str, str], fmt: str) -> str:
        if isinstance(key, tuple):
            return " / ".join(f"{res[k]:.1f}" for k in key)
        return fmt.format(res[key])

    width = 48
    print()
    print(
        f"{args.size}x{args.size} 16-bit -> {args.image_size}x{args.image_size}; images/s unless "
        f"stated, best of {args.repeat}; {os.cpu_count()} CPUs, load average: "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"{'':{width}s}" + "".join(f"{LABELS[c]:>20s}" for c in results))
    for label, key, fmt in rows:
        print(f"{label:{width}s}" + "".join(f"{cell(r, key, fmt):>20s}" for r in results.values()))
    print()
    ok = True
    for c, r in results.items():
        ratio = r["r_ingest_limit"]
        verdict = "PASS" if ratio >= TARGET else "MISS"
        ok &= ratio >= TARGET
        print(
            f"{verdict} {LABELS[c]}: ingest {r['ingest']:.1f} img/s = {ratio:.2f} x limit "
            f"{r['limit']:.1f} img/s (target >= {TARGET:.2f}; CPU-time ratio {r['r_cpu']:.2f})"
        )
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, help="images per syntax (overrides the two below)")
    parser.add_argument(
        "--n-explicit",
        type=int,
        default=192,
        help="uncompressed images (fixed per-run costs amortise)",
    )
    parser.add_argument("--n-j2k", type=int, default=16, help="JPEG 2000 Lossless images")
    parser.add_argument("--size", type=int, default=2048, help="rows = columns of the DICOMs")
    parser.add_argument("--image-size", type=int, default=128, help="training size")
    parser.add_argument("--workers", type=int, default=2, help="processes (pool and ingest)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument(
        "--syntax", choices=[*SYNTAXES, "both"], default="both", help="which files to time"
    )
    parser.add_argument(
        "--keep",
        "--tmp",
        dest="keep",
        type=Path,
        help="folder for the synthetic files, kept and reused (default: a temporary folder)",
    )
    args = parser.parse_args(argv)
    counts = {
        s: args.n or (args.n_explicit if s == "explicit" else args.n_j2k)
        for s in SYNTAXES
        if args.syntax in (s, "both")
    }
    root = args.keep or Path(tempfile.mkdtemp(prefix="cxr-bench-ingest-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        paths = make_dataset(root, counts, args.size)
        scratch = Path(tempfile.mkdtemp(prefix="out-", dir=root))
        results = {s: measure(s, paths[s], args, scratch) for s in counts}
        shutil.rmtree(scratch, ignore_errors=True)
        ok = report(results, args)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
