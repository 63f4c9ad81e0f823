"""A real `bentoml serve` of the service on 127.0.0.1, for the service's HTTP tests.

``serve(...)`` starts it in its own process group (so the tests end exactly what they started),
waits for ``/readyz`` and stops it. The model: ``tag`` through CXR_TRIAGE_MODEL_TAG, or, with
``promote_tag``, through the serving record of the server's own state folder (the service then
resolves it when it starts, as a from-source deployment does).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helpers.ports import free_port

BENTOML = Path(sys.executable).with_name("bentoml")
SERVICE = "cxr_triage.serving.service:CxrTriage"
# The settings of the served test service (integration/conftest.py ``service_server``).
API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_BODY_MB = 10
SERVICE_SALT = "service-test-salt-0123456789"


@dataclass(frozen=True)
class Server:
    url: str
    log_path: Path  # the prediction log
    model_tag: str
    proc: subprocess.Popen
    output: Path  # the server's stdout and stderr

    def tail(self, n: int = 3000) -> str:
        return self.output.read_text(errors="replace")[-n:]


def wait_ready(url: str, proc: subprocess.Popen, output: Path, timeout: float = 180) -> float:
    """Seconds until ``/readyz`` answered 200; fails the test if the server exits or hangs."""
    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"bentoml serve exited: {output.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        if time.monotonic() - start > timeout:
            pytest.fail(f"not ready in {timeout} s: {output.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def serve(
    root: Path,
    *,
    tag: str,
    promote_tag: bool = False,
    target: str = SERVICE,
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """Serve ``target`` (the service from source, or a Bento tag) with a state folder in root."""
    state = root / "state"
    if promote_tag:
        from cxr_triage.inference.registry import promote

        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CXR_TRIAGE_STATE_DIR", str(state))
            promote(tag, reason="the service test serves it")
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CXR_TRIAGE_")},
        "BENTOML_DO_NOT_TRACK": "True",  # BENTOML_HOME: the test run's store (tests/conftest.py)
        "CXR_TRIAGE_STATE_DIR": str(state),
        **({} if promote_tag or target != SERVICE else {"CXR_TRIAGE_MODEL_TAG": tag}),
        **(env or {}),
    }
    port = free_port()
    output = root / "server.log"
    command = [str(BENTOML), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    with output.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=root,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, output)
        yield Server(url, state / "predictions.sqlite", tag, proc, output)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and every worker it started (workers run in process groups of their
    own, so the arbiter's group alone would leave them behind if it had to be killed)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        workers = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # the group this helper started, nothing else
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for worker in workers:
        with contextlib.suppress(psutil.Error):
            worker.wait(timeout=10)
        with contextlib.suppress(psutil.Error):
            worker.kill()
