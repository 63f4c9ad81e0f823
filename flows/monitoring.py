"""Monitoring flow: drift of recent predictions (or a folder of new images) against the reference.

On drift it emits ``cxr.drift.detected`` (resource ``cxr.monitor.<site>``; payload: the alert's
title and text, rounded figures, links to the Evidently report and this run), which the drift
automation sends to the webhook, and, when ``monitor.retrain_on_drift`` is true, starts the
retraining deployment (fire-and-forget). When fed-back reads show the realised sensitivity
below the target, it emits ``cxr.performance.below-target`` (its own alert), drift or not.
A prediction log that does not exist yet, or an empty window, ends Completed with
"insufficient data" and no alert.

    python -m flows.monitoring [--folder new_images/] [--site hospital_x]
                               [--hours 24 | --since T] [--until T] [--last N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from cxr_triage.config import load_params
from cxr_triage.errors import ConfigError
from cxr_triage.monitoring import DriftSummary, ImageFolder, LogWindow, check_drift
from cxr_triage.monitoring.summary import INSUFFICIENT_DATA
from cxr_triage.orchestration.events import drift_event, performance_event

__all__ = [
    "RETRAINING_DEPLOYMENT",
    "add_window_options",
    "drift_check",
    "monitoring_flow",
    "trigger_retraining",
]

RETRAINING_DEPLOYMENT = "cxr-retraining/weekly"


def add_window_options(parser: argparse.ArgumentParser) -> None:
    """``--hours``, ``--since``, ``--until``, ``--last``: the window options of the CLI."""
    parser.add_argument("--hours", type=float, default=None, help="the last H hours")
    parser.add_argument("--since", default=None, help="window start, ISO 8601 (UTC)")
    parser.add_argument("--until", default=None, help="window end (exclusive)")
    parser.add_argument("--last", type=int, default=None, help="the most recent N predictions")


@task(name="drift-check", cache_policy=NO_CACHE)
def drift_check(
    repo_dir: str,
    folder: str | None,
    site: str | None,
    window: dict[str, Any],
    package_dir: str | None,
    model_tag: str | None,
) -> DriftSummary:
    """The drift check on a folder, or on a window of the prediction log.

    ``window``: ``since``, ``until``, ``last``, ``hours`` as ``cxr-triage monitor`` takes them;
    none given: the last ``schedule.monitoring_window_hours``.
    """
    logger = get_run_logger()
    params = load_params(Path(repo_dir) / "params.yaml")
    if folder and any(v is not None for v in window.values()):
        raise ConfigError("give a folder or a log window (hours/since/until/last), not both")
    if folder:
        source: ImageFolder | LogWindow = ImageFolder(Path(folder))
    elif any(v is not None for v in window.values()):
        source = LogWindow.from_options(**window)
    else:
        source = LogWindow.from_options(hours=params.schedule.monitoring_window_hours)
    summary = check_drift(params, source, package=package_dir, model_tag=model_tag, site=site)
    for entry in summary.source.get("unreadable", []):
        logger.warning("not monitored: %s (%s)", entry["file"], entry["reason"])
    return summary


@task(name="trigger-retraining", cache_policy=NO_CACHE)
def trigger_retraining(deployment: str, reason: str) -> str | None:
    """Start the retraining deployment without waiting; None (and a clear log) if it is missing."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    logger = get_run_logger()
    try:
        run = run_deployment(
            deployment, timeout=0, as_subflow=False, parameters={"reason": reason}
        )
    except ObjectNotFound:
        logger.error(
            "retraining deployment %r does not exist: nothing was started; register it with "
            "`python -m flows.deploy` (or start retraining by hand: python -m flows.retraining)",
            deployment,
        )
        return None
    logger.info("retraining started: flow run %s (deployment %s)", run.id, deployment)
    return str(run.id)


@flow(name="cxr-drift-monitoring", log_prints=True)
def monitoring_flow(
    repo_dir: str = ".",
    folder: str | None = None,
    site: str | None = None,
    window_hours: float | None = None,
    since: str | None = None,
    until: str | None = None,
    last: int | None = None,
    package_dir: str | None = None,
    model_tag: str | None = None,
    retraining_deployment: str = RETRAINING_DEPLOYMENT,
) -> dict[str, Any]:
    """Check drift once; alert (event) and optionally retrain on drift.

    Args:
        repo_dir: the repository root (params.yaml, prediction log and reports are below it).
        folder: monitor this folder of images instead of the prediction log.
        site: restrict to (and name the alert after) this site.
        window_hours, since, until, last: the prediction-log window, as ``cxr-triage
            monitor --hours/--since/--until/--last`` (none given: the last
            ``schedule.monitoring_window_hours``). A log that does not exist yet, or an empty
            window, ends Completed with "insufficient data" and no alert.
        package_dir: package whose reference is used; with ``model_tag``, chosen as by
            ``cxr-triage monitor`` (default: the serving model).
        model_tag: a model tag in the BentoML store.
        retraining_deployment: started on drift when ``monitor.retrain_on_drift`` is true.

    Returns:
        ``drift``, ``status``, ``one_line``, ``summary`` (``summary.json`` as written),
        ``event`` (the drift event or None), ``performance_event`` (emitted when the realised
        sensitivity of fed-back reads fell below the target, else None) and
        ``retraining_run`` (flow run id or None).
    """
    logger = get_run_logger()
    repo = Path(repo_dir).resolve()
    window = {"since": since, "until": until, "last": last, "hours": window_hours}
    summary = drift_check(str(repo), folder, site, window, package_dir, model_tag)
    report: dict[str, Any] = {
        "drift": summary.drift,
        "status": summary.status,
        "one_line": summary.one_line(),
        "summary": summary.to_json(),
        "event": None,
        "performance_event": None,
        "retraining_run": None,
    }
    create_markdown_artifact(
        key="cxr-drift-report",
        markdown=f"## Drift check\n\n{report['one_line']}\n\n```json\n"
        f"{json.dumps(report['summary'], indent=2)}\n```\n",
        description="Evidently drift check",
    )
    if summary.performance_alert:  # labels say the model got worse: always worth an alert
        logger.warning("sensitivity below target: %s", summary.performance.one_line())
        event = emit_event(**performance_event(report["summary"], flow_run_id=flow_run.get_id()))
        report["performance_event"] = str(event.id) if event else None
    if summary.status == INSUFFICIENT_DATA:
        # Too few images to decide: neither an all-clear nor an alert (say so loudly).
        logger.warning("no verdict: %s", report["one_line"])
        return report
    if not report["drift"]:
        logger.info("no drift: %s", report["one_line"])
        return report
    logger.warning("drift: %s", report["one_line"])
    event = emit_event(**drift_event(report["summary"], flow_run_id=flow_run.get_id()))
    report["event"] = str(event.id) if event else None
    if summary.retrain_on_drift:
        report["retraining_run"] = trigger_retraining(
            retraining_deployment, f"drift: {report['one_line']}"
        )
    return report


def main() -> None:  # pragma: no cover - CLI wrapper
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-dir", default=".")
    parser.add_argument("--folder", default=None)
    parser.add_argument("--site", default=None)
    add_window_options(parser)
    args = parser.parse_args()
    result = monitoring_flow(
        repo_dir=args.repo_dir,
        folder=args.folder,
        site=args.site,
        window_hours=args.hours,
        since=args.since,
        until=args.until,
        last=args.last,
    )
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
