"""Retention: drift checks delete what is older than the configured number of days.

- ``monitor.report_retention_days``: run folders under ``<monitor dir>/runs/`` whose start
  time (the folder name) is older, and their runs in the Evidently workspace (found through
  each folder's ``summary.json``);
- ``monitor.log_retention_days``: predictions logged, and reads received, before then, in the
  prediction log the check read (:meth:`PredictionLog.delete_before`).

Both default to null: nothing is deleted. The prediction log is an audit log: back it up
(``cxr-triage backup``) before it is pruned. The run being written is never deleted.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cxr_triage.config import MonitorParams
from cxr_triage.monitoring.evidently_env import quiet

__all__ = ["apply_retention", "expired_runs"]

log = logging.getLogger(__name__)
_RUN_TIME = "%Y%m%dT%H%M%SZ"


def _started(run: Path) -> datetime | None:
    try:
        return datetime.strptime(run.name.split("-", 1)[0], _RUN_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None  # not a run folder: left alone


def expired_runs(runs_dir: Path, *, before: datetime) -> list[Path]:
    """Run folders under ``runs_dir`` started before ``before`` (by their name), oldest first."""
    if not runs_dir.is_dir():
        return []
    found = [(t, p) for p in runs_dir.iterdir() if p.is_dir() and (t := _started(p)) is not None]
    return [p for t, p in sorted(found) if t < before]


def _delete_workspace_runs(workspace_dir: Path, runs: list[Path]) -> int:
    """Delete the workspace runs that the run folders' summaries name."""
    pairs = []
    for run in runs:
        try:
            reports = json.loads((run / "summary.json").read_text(encoding="utf-8"))["reports"]
        except (OSError, ValueError, KeyError):
            continue
        if reports.get("project_id") and reports.get("run_id"):
            pairs.append((reports["project_id"], reports["run_id"]))
    if not pairs or not workspace_dir.is_dir():
        return 0
    with quiet():
        from evidently.ui.workspace import Workspace

        workspace = Workspace.create(str(workspace_dir))
        deleted = 0
        for project_id, run_id in pairs:
            if run_id in {str(r) for r in workspace.list_runs(project_id)}:
                workspace.delete_run(project_id, run_id)
                deleted += 1
    return deleted


def apply_retention(
    monitor: MonitorParams,
    *,
    out_dir: Path,
    log_path: Path | None,
    now: datetime | None = None,
) -> dict[str, int]:
    """Delete expired reports and log rows (see the module docstring).

    Args:
        monitor: the retention settings.
        out_dir: the monitoring folder (``runs/``, ``workspace/``).
        log_path: the prediction log the check read (None: a folder was checked; the log is
            left alone). A log that does not exist is not created.
        now: the current time (UTC).

    Returns:
        ``runs``, ``workspace_runs``, ``predictions`` and ``reads`` deleted.
    """
    now = now or datetime.now(UTC)
    deleted = {"runs": 0, "workspace_runs": 0, "predictions": 0, "reads": 0}
    if monitor.report_retention_days is not None:
        cutoff = now - timedelta(days=monitor.report_retention_days)
        runs = expired_runs(out_dir / "runs", before=cutoff)
        deleted["workspace_runs"] = _delete_workspace_runs(out_dir / "workspace", runs)
        for run in runs:
            shutil.rmtree(run)
        deleted["runs"] = len(runs)
    if monitor.log_retention_days is not None and log_path is not None and log_path.is_file():
        from cxr_triage.inference.predlog import PredictionLog

        cutoff = now - timedelta(days=monitor.log_retention_days)
        predictions = PredictionLog(log_path)
        try:
            deleted["predictions"], deleted["reads"] = predictions.delete_before(
                cutoff.isoformat()
            )
        finally:
            predictions.close()
    if any(deleted.values()):
        log.info("retention deleted %s", deleted)
    return deleted
