"""Serving overhead: HTTP latency and throughput of the BentoML service against bare calls.

Targets (issue 4): single-image p50 latency over HTTP <= 1.3x an in-process
``Predictor.predict`` on the same file (a 2048x2048 16-bit DICOM and a 512 px PNG), and
throughput at 32 concurrent clients >= 0.8x the bare batched model (``Predictor.score`` on
batches of prepared images).

``--capacity`` (issue 11) measures instead where overload starts, with ``hey``: throughput,
share of typed 503 answers (``overloaded``) and latency at 1 to 128 concurrent clients; the
capacity is the best throughput, and 503s start where the clients outnumber what the service
holds at once (``CXR_TRIAGE_MAX_IN_FLIGHT`` per front worker) or the batcher's latency target
cannot be met. Run as::

    python benchmarks/bench_serve.py                         # models/package (128 px)
    python benchmarks/bench_serve.py --package DIR --workers 2
    python benchmarks/bench_serve.py --capacity              # needs hey (apt-get install hey)

The package is registered in a temporary BentoML store and served by a real ``bentoml serve``
subprocess on 127.0.0.1; the clients run in this process, on the same cores as the server.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

logger = logging.getLogger("bench_serve")

REPO = Path(__file__).resolve().parents[1]
LATENCY_TARGET = 1.3
THROUGHPUT_TARGET = 0.8


def make_dicom(path: Path, size: int = 2048, seed: int = 0) -> Path:
    """A 16-bit (12 bits stored) DX chest DICOM of ``size`` x ``size`` with a smooth body."""
    from cxr_triage.data.synth.dicom import write_dicom

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = np.exp(-(((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.45) ** 2))
    pixels = np.clip(body * 3000 + rng.normal(0, 60, (size, size)), 0, 4095).astype(np.uint16)
    attributes = {"BodyPartExamined": "CHEST", "ViewPosition": "PA"}
    return write_dicom(path, pixels, modality="DX", bits_stored=12, attributes=attributes)


def make_png(path: Path, size: int = 512) -> Path:
    """A real 512 px NIH radiograph from ../shared/data when present, else a synthetic one."""
    from PIL import Image

    shared = sorted((REPO / ".." / "shared" / "data" / "nih-cxr").glob("**/*.png"))
    if shared:
        Image.open(shared[0]).convert("L").resize((size, size)).save(path)
    else:
        rng = np.random.default_rng(1)
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_calls(func, n: int) -> list[float]:  # noqa: ANN001 - any zero-argument callable
    out = []
    for _ in range(n):
        start = time.perf_counter()
        func()
        out.append(time.perf_counter() - start)
    return out


def start_server(tag: str, home: Path, workers: int, root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "CXR_TRIAGE_MODEL_TAG": tag,
        "CXR_TRIAGE_STATE_DIR": str(root / "state"),
        "CXR_TRIAGE_WORKERS": str(workers),
    }
    for name in (
        "CXR_TRIAGE_API_KEY",
        "CXR_TRIAGE_PREDICTION_LOG",
        "CXR_TRIAGE_RATE_LIMIT_PER_MIN",
    ):
        env.pop(name, None)
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "serve", "cxr_triage.serving.service:CxrTriage"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=(root / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit((root / "server.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() - start > 180:
            raise SystemExit("the server was not ready in 180 s")
        time.sleep(0.5)
    logger.info(
        "server ready in %.1f s (%d front workers + 1 scorer)", time.monotonic() - start, workers
    )
    return proc, url


def throughput(url: str, payload: bytes, clients: int, n_requests: int) -> float:
    """Images per second with ``clients`` concurrent clients posting ``payload``."""

    def worker(count: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            for _ in range(count):
                r = c.post("/predict", files={"image": ("x.png", payload)})
                r.raise_for_status()

    shares = [n_requests // clients + (i < n_requests % clients) for i in range(clients)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, shares))
    return n_requests / (time.perf_counter() - start)


BOUNDARY = "bench0serve0boundary"


def multipart_file(path: Path, root: Path) -> Path:
    """The body of one /predict upload of ``path``, for hey's -D."""
    body = root / "body.bin"
    body.write_bytes(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return body


def hey(url: str, body: Path, *args: str) -> tuple[list[int], list[float], float, int]:
    """Run hey; (statuses, latencies in s, wall seconds, requests without an answer)."""
    command = ["hey", *args, "-t", "30", "-m", "POST", "-o", "csv", "-D", str(body)]
    command += ["-T", f"multipart/form-data; boundary={BOUNDARY}", f"{url}/predict"]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    rows = [r.split(",") for r in out.splitlines()]
    rows = [r for r in rows if len(r) == 8 and r[6].isdigit()]
    errors = 0
    if "-n" in args:  # hey sends n rounded down to a multiple of the clients
        clients = int(args[args.index("-c") + 1])
        errors = int(args[args.index("-n") + 1]) // clients * clients - len(rows)
    return [int(r[6]) for r in rows], [float(r[0]) for r in rows], wall, errors


def capacity(url: str, body: Path) -> None:
    """Closed-loop throughput and 503 share per number of concurrent clients (see the doc).

    In a closed loop the offered rate is the answered rate, so the rate at which 503s start
    is the throughput at the first concurrency level that gets any. (hey's own rate limit
    starts every client's ticker at once: bursts of all clients, not an open-loop rate.)
    """
    hey(url, body, "-c", "8", "-n", "32")  # warm-up
    logger.info("%8s %9s %9s %8s %8s %7s", "clients", "ok/s", "503", "p50", "p99", "errors")
    best, first_503 = 0.0, None
    for clients in (1, 4, 8, 16, 32, 48, 64, 96, 128):
        n = 8 * clients + 96
        statuses, latencies, wall, errors = hey(url, body, "-c", str(clients), "-n", str(n))
        ok = statuses.count(200) / wall
        best = max(best, ok)
        shed = statuses.count(503)
        if shed and first_503 is None:
            first_503 = (clients, len(statuses) / wall, 100 * shed / len(statuses))
        logger.info(
            "%8d %9.1f %5d/%-4d %6.0fms %6.0fms %7d",
            clients,
            ok,
            shed,
            len(statuses),
            1000 * percentile(latencies, 50),
            1000 * percentile(latencies, 99),
            errors,
        )
    if first_503 is None:
        logger.info("capacity: %.1f requests/s (best); no 503 up to 128 clients", best)
    else:
        clients, rate, share = first_503
        logger.info(
            "capacity: %.1f requests/s (best); 503s start at %d concurrent clients, %.1f "
            "requests/s offered (%.0f%% of the answers 503 there)",
            best,
            clients,
            rate,
            share,
        )


def main() -> None:
    """Parse arguments, start the server, measure and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=REPO / "models" / "package")
    parser.add_argument(
        "--workers", type=int, default=1, help="front workers (CXR_TRIAGE_WORKERS)"
    )
    parser.add_argument("--n-latency", type=int, default=30, help="requests per file for p50/p99")
    parser.add_argument("--n-throughput", type=int, default=192, help="requests per client level")
    parser.add_argument(
        "--capacity", action="store_true", help="measure where 503s start, with hey"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench_serve-") as tmp:
        root = Path(tmp)
        os.environ["BENTOML_HOME"] = str(root / "bentoml")
        from cxr_triage.inference.predictor import Predictor
        from cxr_triage.inference.registry import register_package

        tag = register_package(args.package)
        dicom = make_dicom(root / "dx2048.dcm")
        png = make_png(root / "cxr512.png")
        predictor = Predictor(args.package, num_threads=2)
        logger.info("package %s (%d px), %s cores", tag, predictor.image_size, os.cpu_count())
        proc, url = start_server(tag, root / "bentoml", args.workers, root)
        if args.capacity:
            try:
                capacity(url, multipart_file(png, root))
            finally:
                os.killpg(proc.pid, signal.SIGTERM)  # the server group started above
                proc.wait(timeout=60)
            logger.info("load average: %s", " ".join(f"{v:.1f}" for v in os.getloadavg()))
            return
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                rows = []
                for path in (dicom, png):
                    data = path.read_bytes()

                    def http_call(data: bytes = data, name: str = path.name) -> None:
                        client.post("/predict", files={"image": (name, data)}).raise_for_status()

                    def local_call(path: Path = path) -> None:
                        predictor.predict([path])

                    for warm in (http_call, local_call):
                        time_calls(warm, 3)
                    # Alternate the two so that load from other processes hits both alike.
                    served, local = [], []
                    for _ in range(args.n_latency):
                        served += time_calls(http_call, 1)
                        local += time_calls(local_call, 1)
                    rows.append((path.name, served, local))
                logger.info(
                    "%-12s %9s %9s %9s %9s %7s",
                    "file",
                    "http_p50",
                    "http_p99",
                    "local_p50",
                    "local_p99",
                    "ratio",
                )
                for name, served, local in rows:
                    ratio = statistics.median(served) / statistics.median(local)
                    logger.info(
                        "%-12s %7.1fms %7.1fms %7.1fms %7.1fms %6.2fx (target <= %.1f: %s)",
                        name,
                        1000 * statistics.median(served),
                        1000 * percentile(served, 99),
                        1000 * statistics.median(local),
                        1000 * percentile(local, 99),
                        ratio,
                        LATENCY_TARGET,
                        "ok" if ratio <= LATENCY_TARGET else "OVER",
                    )

            # Bare batched model: Predictor.score on batches of 32 prepared images.
            prepared = predictor.prepare(png)
            batch = np.stack([prepared.pixels] * 32)
            predictor.score(batch)
            bare_times = time_calls(lambda: predictor.score(batch), 10)
            bare = len(batch) / min(bare_times)
            decode = 1 / min(time_calls(lambda: predictor.prepare(png.read_bytes()), 10))
            logger.info(
                "bare Predictor.score: %.0f images/s (batch 32); decode+preprocess alone: %.0f/s",
                bare,
                decode,
            )
            payload = png.read_bytes()
            throughput(url, payload, 8, 16)  # warm-up
            for clients in (1, 8, 32):
                rate = throughput(url, payload, clients, args.n_throughput)
                logger.info(
                    "%2d clients: %6.1f images/s = %.2fx bare%s",
                    clients,
                    rate,
                    rate / bare,
                    f" (target >= {THROUGHPUT_TARGET})" if clients == 32 else "",
                )
            metrics = httpx.get(f"{url}/metrics").text
            for line in metrics.splitlines():
                if line.startswith("bentoml_service_adaptive_batch_size_") and (
                    "_sum" in line or "_count" in line
                ):
                    logger.info("%s", line.split("{")[0] + " " + line.rsplit(" ", 1)[1])
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # the server group started above
            proc.wait(timeout=60)
        logger.info("load average at the end: %s", " ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
