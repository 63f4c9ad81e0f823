"""Register the schedules: daily drift monitoring, weekly retraining (crons from params.yaml).

Against a running ``prefect server start`` (``PREFECT_API_URL=http://127.0.0.1:4200/api``)::

    python -m flows.deploy            # deployments on the process work pool (created if missing);
                                      # then run them with: prefect worker start --pool cxr-local
    python -m flows.deploy --serve    # or: one long-running process that schedules and runs them
    python -m flows.deploy --hours 12 # the monitoring window, as `cxr-triage monitor` takes it
                                      # (--hours/--since/--until/--last; default: schedule's)

With ``CXR_TRIAGE_ALERT_WEBHOOK`` set, the alert automations are (re)created too.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_triage.config import Params, load_params

__all__ = [
    "WINDOW_PARAMETERS",
    "DeploymentSpec",
    "deploy_all",
    "deployment_specs",
    "ensure_work_pool",
    "serve_all",
]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DeploymentSpec:
    """One scheduled deployment: flow entrypoint, name, cron and parameters."""

    entrypoint: str
    name: str
    cron: str
    timezone: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def flow_name(self) -> str:
        return {"monitoring_flow": "cxr-drift-monitoring", "retraining_flow": "cxr-retraining"}[
            self.entrypoint.rsplit(":", 1)[1]
        ]

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"


WINDOW_PARAMETERS = {"hours": "window_hours", "since": "since", "until": "until", "last": "last"}


def deployment_specs(
    params: Params,
    repo_dir: str | os.PathLike[str],
    window: dict[str, Any] | None = None,
) -> list[DeploymentSpec]:
    """The deployments, from ``params.schedule``; the flows run in ``repo_dir``.

    Args:
        params: ``params.schedule`` gives the crons and the time zone.
        repo_dir: the repository the flows run in.
        window: the monitoring window, as ``cxr-triage monitor`` takes it (``hours``,
            ``since``, ``until``, ``last``; None values are left out); default: the last
            ``schedule.monitoring_window_hours``.
    """
    repo = str(Path(repo_dir).resolve())
    schedule = params.schedule
    monitoring = {"repo_dir": repo}
    for option, value in (window or {}).items():
        if value is not None:
            monitoring[WINDOW_PARAMETERS[option]] = value
    return [
        DeploymentSpec(
            entrypoint="flows/monitoring.py:monitoring_flow",
            name="daily",
            cron=schedule.monitoring_cron,
            timezone=schedule.timezone,
            description="Drift of the last window of predictions against the reference",
            parameters=monitoring,
        ),
        DeploymentSpec(
            entrypoint="flows/retraining.py:retraining_flow",
            name="weekly",
            cron=schedule.retraining_cron,
            timezone=schedule.timezone,
            description="Ingest new data, retrain, gate on the frozen test set, promote, notify",
            parameters={"repo_dir": repo},
        ),
    ]


def ensure_work_pool(name: str) -> bool:
    """Create the process work pool if missing; return True if it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            return False
    return True


def _load_flow(spec: DeploymentSpec) -> Any:
    if spec.entrypoint.startswith("flows/monitoring.py"):
        from flows.monitoring import monitoring_flow

        return monitoring_flow
    from flows.retraining import retraining_flow

    return retraining_flow


def deploy_all(
    repo_dir: str | os.PathLike[str] = REPO, window: dict[str, Any] | None = None
) -> list[str]:
    """Register every deployment on the work pool of ``schedule.work_pool``; return their ids.

    ``window``: the monitoring window (see :func:`deployment_specs`).
    """
    from prefect import flow as prefect_flow
    from prefect.schedules import Cron

    repo = Path(repo_dir).resolve()
    params = load_params(repo / "params.yaml")
    ensure_work_pool(params.schedule.work_pool)
    ids = []
    for spec in deployment_specs(params, repo, window):
        deployment_id = prefect_flow.from_source(
            source=str(repo), entrypoint=spec.entrypoint
        ).deploy(
            name=spec.name,
            work_pool_name=params.schedule.work_pool,
            schedules=[Cron(spec.cron, timezone=spec.timezone)],
            parameters=spec.parameters,
            description=spec.description,
            print_next_steps=False,
        )
        ids.append(str(deployment_id))
    return ids


def serve_all(  # pragma: no cover - blocks
    repo_dir: str | os.PathLike[str] = REPO, window: dict[str, Any] | None = None
) -> None:
    """Schedule and run every deployment from this one process (no work pool, no worker)."""
    from prefect import serve
    from prefect.schedules import Cron

    repo = Path(repo_dir).resolve()
    params = load_params(repo / "params.yaml")
    serve(
        *(
            _load_flow(spec).to_deployment(
                name=spec.name,
                schedules=[Cron(spec.cron, timezone=spec.timezone)],
                parameters=spec.parameters,
                description=spec.description,
            )
            for spec in deployment_specs(params, repo, window)
        )
    )


def main() -> None:  # pragma: no cover - CLI wrapper
    from flows.alerts import WEBHOOK_ENV, setup_alerts
    from flows.monitoring import add_window_options

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-dir", default=str(REPO))
    parser.add_argument("--serve", action="store_true", help="serve here instead of a work pool")
    add_window_options(parser)  # the monitoring deployment's window
    args = parser.parse_args()
    window = {key: getattr(args, key) for key in WINDOW_PARAMETERS}
    if os.environ.get(WEBHOOK_ENV):
        print(f"alerts: {', '.join(setup_alerts()['names'])}")
    else:
        print(f"alerts: not set up ({WEBHOOK_ENV} is unset)")
    params = load_params(Path(args.repo_dir) / "params.yaml")
    for spec in deployment_specs(params, args.repo_dir, window):
        print(f"{spec.full_name}: cron '{spec.cron}' ({spec.timezone})")
    if args.serve:
        serve_all(args.repo_dir, window)
        return
    deploy_all(args.repo_dir, window)
    print(f"registered; run them with: prefect worker start --pool {params.schedule.work_pool}")


if __name__ == "__main__":
    main()
