"""Monitoring flow: drift of recent predictions (or a folder of new images) against the reference.

On drift it emits ``cxr.drift.detected`` (resource ``cxr.monitor.<site>``; payload: one-line
summary, drift share, report paths), which the drift automation turns into a webhook alert, and,
when ``monitor.retrain_on_drift`` is true, starts the retraining deployment (fire-and-forget).

    python -m flows.monitoring [--folder new_images/] [--site hospital_x] [--hours 24]
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from cxr_triage.config import load_params
from cxr_triage.orchestration.events import drift_event
from cxr_triage.state import state_layout

__all__ = ["RETRAINING_DEPLOYMENT", "monitoring_flow", "trigger_retraining"]

RETRAINING_DEPLOYMENT = "cxr-retraining/weekly"


def _package_dir(params: Any, repo: Path, package_dir: str | None) -> Path:
    """The package whose reference is compared: given, else the serving one, else the built one."""
    if package_dir:
        return Path(package_dir)
    from cxr_triage.inference.registry import serving_tag, stored_package_dir

    tag = serving_tag()
    return stored_package_dir(tag) if tag else repo / params.paths.package_dir


@task(name="drift-report", cache_policy=NO_CACHE)
def drift_report(
    repo_dir: str,
    package_dir: str | None,
    folder: str | None,
    site: str | None,
    window_hours: float | None,
) -> dict[str, Any] | None:
    """Build the current data and run the Evidently report; None when there is nothing to check."""
    from cxr_triage.monitoring.drift import current_from_images, current_from_log, run_monitoring

    logger = get_run_logger()
    repo = Path(repo_dir)
    params = load_params(repo / "params.yaml")
    package = _package_dir(params, repo, package_dir)
    if folder:
        current, rejects = current_from_images(package, Path(folder), site=site)
        for path, reason in rejects:
            logger.warning("not monitored: %s (%s)", path, reason)
    else:
        hours = window_hours or params.schedule.monitoring_window_hours
        since = datetime.now(UTC) - timedelta(hours=hours)
        current = current_from_log(state_layout().prediction_log, since=since)
    if len(current) == 0:
        logger.info("no current data (empty window or folder): no drift check")
        return None
    result = run_monitoring(
        params,
        current=current,
        package_dir=package,
        site=site,
    )
    summary = dict(result.summary)
    summary.setdefault("html_path", str(result.html_path))
    summary.setdefault("json_path", str(result.json_path))
    return {
        "drift": bool(result.drift),
        "status": result.status,
        "one_line": result.one_line(),
        "summary": summary,
    }


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
    package_dir: str | None = None,
    retraining_deployment: str = RETRAINING_DEPLOYMENT,
) -> dict[str, Any]:
    """Check drift once; alert (event) and optionally retrain on drift.

    Args:
        repo_dir: the repository root (params.yaml, prediction log and reports are below it).
        folder: monitor this folder of images instead of the prediction log.
        site: restrict to (and name the alert after) this site.
        window_hours: prediction-log window (default ``schedule.monitoring_window_hours``).
        package_dir: package whose reference is used (default: the serving package).
        retraining_deployment: started on drift when ``monitor.retrain_on_drift`` is true.

    Returns:
        ``drift``, ``one_line``, ``summary`` (with report paths), ``event`` (emitted or None)
        and ``retraining_run`` (flow run id or None); ``skipped`` when there was no data.
    """
    logger = get_run_logger()
    repo = Path(repo_dir).resolve()
    params = load_params(repo / "params.yaml")
    report = drift_report(str(repo), package_dir, folder, site, window_hours)
    if report is None:
        return {"skipped": True, "drift": False, "event": None, "retraining_run": None}
    create_markdown_artifact(
        key="cxr-drift-report",
        markdown=f"## Drift check\n\n{report['one_line']}\n\n```json\n"
        f"{json.dumps(report['summary'], indent=2, default=str)}\n```\n",
        description="Evidently drift check",
    )
    report.update(event=None, retraining_run=None, skipped=False)
    if report["status"] == "insufficient_data":
        # Too few images to decide: neither an all-clear nor an alert (say so loudly).
        logger.warning("no verdict: %s", report["one_line"])
        return report
    if not report["drift"]:
        logger.info("no drift: %s", report["one_line"])
        return report
    logger.warning("drift: %s", report["one_line"])
    event = emit_event(**drift_event(report["summary"], report["one_line"], site))
    report["event"] = str(event.id) if event else None
    if getattr(params.monitor, "retrain_on_drift", False):
        report["retraining_run"] = trigger_retraining(
            retraining_deployment, f"drift: {report['one_line']}"
        )
    return report


def main() -> None:  # pragma: no cover - CLI wrapper
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-dir", default=".")
    parser.add_argument("--folder", default=None)
    parser.add_argument("--site", default=None)
    parser.add_argument("--hours", type=float, default=None)
    args = parser.parse_args()
    result = monitoring_flow(
        repo_dir=args.repo_dir, folder=args.folder, site=args.site, window_hours=args.hours
    )
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
