"""Schedules that fire: a real `prefect server start`'s scheduler makes the runs, a real
`prefect worker start` runs one, and `cxr-triage doctor` says healthy or what to do.

No `prefect deployment run` anywhere: every run counted here has ``auto_scheduled`` set, which
only the server's scheduler does. With SQLAlchemy 2.1 the scheduler fails on every loop
(``Can't evaluate bulk DML statement`` in the server's log) and the first wait fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from helpers.pipeline import REPO
from helpers.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


if str(REPO) not in sys.path:  # `flows/` is a top-level folder of the repository, not installed
    sys.path.insert(0, str(REPO))
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "schedule-test-pool"
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")
FLOW_SOURCE = """
from prefect import flow


@flow(name="schedule-probe")
def probe() -> str:
    return "ran"
"""


@contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group; SIGTERM the group on exit (SIGKILL after 30 s)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            with _suppress_lookup():
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with _suppress_lookup():
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@contextmanager
def _suppress_lookup() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:  # the group has already exited
        pass


def _wait_for(what: str, probe: Callable[[], object], timeout: float, log: Path) -> object:
    """Poll ``probe`` until it returns something truthy; fail with the log's errors if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1.0)
    lines = log.read_text(errors="replace").splitlines()
    # Logged errors and the exception line of each traceback (the cause, e.g. SQLAlchemy's).
    errors = [line for line in lines if "ERROR" in line or EXCEPTION_LINE.match(line)]
    raise AssertionError(
        f"{what} within {timeout:.0f} s; {log.name}:\n" + "\n".join((errors or lines)[-30:])
    )


def _doctor(env: dict[str, str], report: Path) -> subprocess.CompletedProcess[str]:
    """Run `cxr-triage doctor`; keep its output in ``report`` (a test artifact)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr_triage.cli",
            "doctor",
            "--lock",
            str(REPO / "requirements.lock"),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report.write_text(_output(result))
    return result


def _runs(client: httpx.Client, deployment_id: str) -> list[dict]:
    response = client.post(
        "/flow_runs/filter",
        json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 200},
    )
    response.raise_for_status()
    return response.json()


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def test_scheduler_creates_runs_a_worker_completes_one_and_doctor_tells(tmp_path, monkeypatch):
    from flows.deploy import ensure_work_pool
    from prefect import flow
    from prefect.schedules import Interval
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, source = tmp_path / "prefect_home", tmp_path / "source"
    source.mkdir()
    (source / "probe_flow.py").write_text(FLOW_SOURCE)
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    port = url.rsplit(":", 1)[1].split("/")[0]
    server_cmd = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port]
    with _process(server_cmd, env, server_log) as server:

        def healthy() -> bool:
            assert server.poll() is None, server_log.read_text()[-3000:]
            try:
                return httpx.get(f"{url}/health", timeout=2).json() is True
            except httpx.HTTPError:
                return False

        _wait_for("the server answered /health", healthy, 120, server_log)
        env["PREFECT_API_URL"] = url
        monkeypatch.setenv("PREFECT_API_URL", url)
        monkeypatch.setenv("PREFECT_HOME", str(home))
        with temporary_settings(updates={PREFECT_API_URL: url}):
            # As flows/deploy.py registers the project's schedules: a process work pool and
            # a deployment from source, with a 20-second interval instead of a cron.
            assert ensure_work_pool(POOL)
            deployment_id = str(
                flow.from_source(source=str(source), entrypoint="probe_flow.py:probe").deploy(
                    name="every-20s",
                    work_pool_name=POOL,
                    schedules=[Interval(timedelta(seconds=20))],
                    print_next_steps=False,
                )
            )
        api = httpx.Client(base_url=url, timeout=30)

        def scheduled() -> list[dict]:
            return [r for r in _runs(api, deployment_id) if r["auto_scheduled"]]

        runs = _wait_for("the scheduler created runs", scheduled, 90, server_log)
        assert all(r["state_type"] == "SCHEDULED" for r in runs)

        # Runs are scheduled but nothing runs them: doctor names the fix.
        without_worker = _doctor(env, tmp_path / "doctor-no-worker.txt")
        assert without_worker.returncode == 1, _output(without_worker)
        assert "FAIL  schedule-probe/every-20s" in without_worker.stdout, _output(without_worker)
        assert f"no worker is online for work pool '{POOL}'" in without_worker.stdout
        assert f"prefect worker start --pool {POOL}" in without_worker.stdout
        assert "ok    environment" in without_worker.stdout, _output(without_worker)

        worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
        worker_cmd = [*PREFECT, "worker", "start", "--pool", POOL, "--limit", "1"]
        with _process(worker_cmd, worker_env, worker_log) as worker:

            def completed() -> list[dict]:
                assert worker.poll() is None, worker_log.read_text()[-3000:]
                return [r for r in scheduled() if r["state_type"] == "COMPLETED"]

            _wait_for("the worker completed a scheduled run", completed, 180, worker_log)

            healthy_report = _doctor(env, tmp_path / "doctor-healthy.txt")
            assert healthy_report.returncode == 0, _output(healthy_report)
            assert "ok    schedule-probe/every-20s:" in healthy_report.stdout
            assert "upcoming run(s)" in healthy_report.stdout
            assert healthy_report.stdout.rstrip().endswith("healthy")
        api.close()
    server_log_text = server_log.read_text(errors="replace")
    assert "Can't evaluate bulk DML" not in server_log_text
    stopped = _doctor(env, tmp_path / "doctor-no-server.txt")
    assert stopped.returncode == 1, _output(stopped)
    assert f"nothing answers at {url}" in stopped.stdout
    assert "prefect server start" in stopped.stdout
