"""``cxr-triage doctor``: will the schedules run? Checks, each with what to do when it fails.

1. The environment matches the lock file (``requirements.lock``): with SQLAlchemy 2.1 the
   Prefect 3.8.8 server's scheduler creates no run and says so only in its log (STACK.md §0).
2. A Prefect server answers at ``PREFECT_API_URL`` (``GET /health``).
3. Every scheduled deployment has upcoming runs made by the server's scheduler, and something
   that will run them: a live worker on its work pool, or its ``--serve`` process.

Prefect's client is imported when the checks run, not on import of this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cxr_triage.errors import CxrError
from cxr_triage.lockfile import LOCKFILE, installed_mismatches, read_lock

__all__ = [
    "RECENT_SECONDS",
    "DoctorReport",
    "Finding",
    "check_deployments",
    "check_environment",
    "check_server",
    "prefect_api_url",
    "run_doctor",
]

# The server's scheduler looks at a new or changed deployment within seconds, and at every
# deployment each minute (PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS, 60): a deployment
# changed less than this long ago may not have its runs yet.
RECENT_SECONDS = 90.0
UPCOMING_LIMIT = 50  # runs read per deployment; more shows as "50+"
START_SERVER = (
    "start it: `prefect server start` (with the PREFECT_HOME that holds its database), then "
    "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
)
DEPLOY = "`python -m flows.deploy`"


@dataclass(frozen=True)
class Finding:
    """One check's outcome: what was checked, what was found, and the fix when not ``ok``."""

    ok: bool
    subject: str
    message: str
    fix: str = ""

    def line(self) -> str:
        """``ok    subject: message`` or ``FAIL  subject: message -> fix``."""
        text = f"{'ok' if self.ok else 'FAIL':<5} {self.subject}: {self.message}"
        return text + (f"\n      -> {self.fix}" if self.fix and not self.ok else "")


@dataclass(frozen=True)
class DoctorReport:
    """Every finding of one ``doctor`` run, in the order checked."""

    findings: tuple[Finding, ...]

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def text(self) -> str:
        """One line per finding (a fix on the next), then ``healthy`` or the problem count."""
        verdict = (
            "healthy"
            if self.healthy
            else f"unhealthy: {len(self.problems)} problem(s), each with what to do above"
        )
        return "\n".join([*(f.line() for f in self.findings), verdict])


def check_environment(lockfile: str | os.PathLike[str] = LOCKFILE) -> list[Finding]:
    """The installed packages against the lock file (names SQLAlchemy's version either way)."""
    try:
        lock = read_lock(lockfile)
    except CxrError as exc:
        return [Finding(False, "environment", str(exc), "run from the repository root")]
    mismatches = installed_mismatches(lock)
    sqlalchemy = next((m for m in mismatches if m.name == "sqlalchemy"), None)
    if not mismatches:
        return [
            Finding(
                True,
                "environment",
                f"{len(lock)} packages match {lockfile} "
                f"(SQLAlchemy {lock.get('sqlalchemy', 'not locked')})",
            )
        ]
    first = ([sqlalchemy] if sqlalchemy else []) + [m for m in mismatches if m is not sqlalchemy]
    shown = "; ".join(str(m) for m in first[:8])
    more = f" (and {len(mismatches) - 8} more)" if len(mismatches) > 8 else ""
    note = (
        " - with SQLAlchemy 2.1 the Prefect server's scheduler creates no runs"
        if sqlalchemy is not None
        else ""
    )
    return [
        Finding(
            False,
            "environment",
            f"{len(mismatches)} of {len(lock)} packages differ from {lockfile}: {shown}{more}"
            + note,
            "`make setup` installs exactly the lock; restart the Prefect server and workers "
            "afterwards",
        )
    ]


def prefect_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect resolves it (environment, then the active profile)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def check_server(api_url: str | None, timeout: float = 10.0) -> Finding:
    """Whether a Prefect server answers ``GET {api_url}/health`` with ``true``."""
    import httpx

    if not api_url:
        return Finding(
            False,
            "prefect server",
            "PREFECT_API_URL is not set: each flow would start a temporary server of its own "
            "and no schedule would ever run",
            START_SERVER,
        )
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout)
        version = httpx.get(f"{api_url.rstrip('/')}/admin/version", timeout=timeout)
    except httpx.HTTPError as exc:
        return Finding(
            False,
            "prefect server",
            f"nothing answers at {api_url} ({exc})",
            "start it: `prefect server start` (with the PREFECT_HOME that holds its database), "
            "or point PREFECT_API_URL at the server that runs",
        )
    if response.status_code != 200 or response.json() is not True:
        return Finding(
            False,
            "prefect server",
            f"{api_url}/health answered {response.status_code} {response.text[:200]!r}",
            "look at the server's log; restart it: `prefect server start`",
        )
    release = version.json() if version.status_code == 200 else "version unknown"
    return Finding(True, "prefect server", f"{api_url} is healthy (Prefect {release})")


def _runner_problem(client: Any, deployment: Any, pools: dict[str, Any]) -> tuple[str, str] | None:
    """What keeps the deployment's runs from running, and its fix (None: nothing)."""
    from prefect.client.schemas.objects import DeploymentStatus, WorkerStatus
    from prefect.exceptions import ObjectNotFound

    pool_name = deployment.work_pool_name
    if not pool_name:  # a `.serve()` deployment: its own process polls the server
        if deployment.status == DeploymentStatus.READY:
            return None
        return "no process serves it (it has no work pool)", f"start it: {DEPLOY} --serve"
    if pool_name not in pools:
        try:
            pools[pool_name] = client.read_work_pool(pool_name)
        except ObjectNotFound:
            pools[pool_name] = None
    pool = pools[pool_name]
    if pool is None:
        return f"its work pool {pool_name!r} does not exist", f"re-run {DEPLOY} (creates it)"
    if pool.is_paused:
        return f"work pool {pool_name!r} is paused", f"prefect work-pool resume {pool_name}"
    if not any(
        w.status == WorkerStatus.ONLINE for w in client.read_workers_for_work_pool(pool_name)
    ):
        return (
            f"no worker is online for work pool {pool_name!r}",
            f"start one: prefect worker start --pool {pool_name}",
        )
    return None


def _check_deployment(
    client: Any, deployment: Any, name: str, pools: dict[str, Any], now: datetime
) -> Finding:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateName,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    of_deployment = FlowRunFilterDeploymentId(any_=[deployment.id])
    upcoming = [  # made by the scheduler, not by `prefect deployment run`
        run
        for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=of_deployment,
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                expected_start_time=FlowRunFilterExpectedStartTime(after_=now),
            ),
            limit=UPCOMING_LIMIT,
        )
        if run.auto_scheduled
    ]
    late = client.count_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=of_deployment,
            state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Late"])),
        )
    )
    problems: list[tuple[str, str]] = []
    if deployment.paused:
        problems.append(("it is paused", f"prefect deployment resume '{name}'"))
    elif not upcoming:
        age = (now - deployment.updated).total_seconds() if deployment.updated else 1e9
        problems.append(
            (
                "the server's scheduler has made no upcoming run for it"
                + (
                    f" (changed {age:.0f} s ago: check again in a minute)"
                    if age < RECENT_SECONDS
                    else ""
                ),
                "look for `schedule_deployments` errors in the server's log (SQLAlchemy 2.1 "
                f"causes them: `make setup`), restart `prefect server start`, re-run {DEPLOY}",
            )
        )
    runner = _runner_problem(client, deployment, pools)
    if runner:
        problems.append(runner)
    next_run = min((r.expected_start_time for r in upcoming), default=None)
    summary = (
        f"{len(upcoming)}{'+' if len(upcoming) == UPCOMING_LIMIT else ''} upcoming run(s)"
        + (f", next {next_run.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if next_run else "")
        + (f", work pool {deployment.work_pool_name}" if deployment.work_pool_name else ", served")
        # Late runs wait for a worker; they run once one polls, so they alone are no failure.
        + (f", {late} Late run(s) waiting" if late else "")
    )
    if not problems:
        return Finding(True, name, summary)
    return Finding(
        False,
        name,
        "; ".join([summary, *(message for message, _ in problems)]),
        "; ".join(fix for _, fix in problems if fix),
    )


def check_deployments(
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Finding]:
    """Every scheduled deployment: upcoming scheduler-made runs, and a live worker or server.

    Needs ``PREFECT_API_URL`` to point at a healthy server (:func:`check_server` first).
    """
    import httpx
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            deployments = client.read_deployments()
            scheduled = [d for d in deployments if any(s.active for s in d.schedules)]
            flow_names = {d.flow_id: client.read_flow(d.flow_id).name for d in scheduled}
            pools: dict[str, Any] = {}
            findings = [
                _check_deployment(client, d, f"{flow_names[d.flow_id]}/{d.name}", pools, now())
                for d in sorted(scheduled, key=lambda d: (flow_names[d.flow_id], d.name))
            ]
    except httpx.HTTPError as exc:
        return [
            Finding(
                False,
                "prefect server",
                f"the API failed while reading deployments ({exc})",
                "look at the server's log; restart it: `prefect server start`",
            )
        ]
    if not scheduled:
        findings.append(
            Finding(
                False,
                "deployments",
                f"no scheduled deployment on this server ({len(deployments)} without a schedule)",
                f"register them: {DEPLOY}, then start a worker on their pool "
                "(params.yaml schedule.work_pool): prefect worker start --pool cxr-local",
            )
        )
    return findings


def run_doctor(lockfile: str | os.PathLike[str] = LOCKFILE) -> DoctorReport:
    """All checks: the environment, then the server, then (if it answers) its deployments."""
    findings = check_environment(Path(lockfile))
    server = check_server(prefect_api_url())
    findings.append(server)
    if server.ok:
        findings.extend(check_deployments())
    return DoctorReport(tuple(findings))
