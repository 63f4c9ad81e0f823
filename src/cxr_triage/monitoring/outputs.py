"""Where a drift check's outputs go: its run folder and the Evidently workspace.

- ``<monitor dir>/runs/<UTC time>-<site or all>/``: ``report.html`` (self-contained, opens
  offline) and ``summary.json``, written together atomically;
- ``<monitor dir>/workspace``: the Evidently workspace, one project per site
  (``cxr-drift-<site>``, or ``cxr-drift-all``) with its dashboard panels, which ``evidently ui
  --workspace`` serves; each run named, tagged and with metadata (site, model, verdict,
  window).
"""

from __future__ import annotations

import hashlib
import html
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from cxr_triage.config import MonitorParams
from cxr_triage.monitoring.dashboard import add_panels
from cxr_triage.monitoring.evidently_env import quiet

__all__ = [
    "PROJECT_PREFIX",
    "add_to_workspace",
    "file_hash",
    "insufficient_html",
    "label_run",
    "project_name",
    "run_dir",
]

PROJECT_PREFIX = "cxr-drift-"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:40] or "site"


def project_name(site: str | None) -> str:
    """The workspace project of a site's runs (``cxr-drift-all`` for mixed sites)."""
    return f"{PROJECT_PREFIX}{_safe_name(site) if site else 'all'}"


def run_dir(out_dir: Path, created: datetime, site: str | None) -> Path:
    """A new run folder under ``out_dir/runs`` named after the time and site (never reused)."""
    runs = out_dir / "runs"
    base = f"{created.strftime('%Y%m%dT%H%M%SZ')}-{_safe_name(site) if site else 'all'}"
    candidate, n = runs / base, 1
    while candidate.exists():
        n += 1
        candidate = runs / f"{base}-{n}"
    return candidate


def file_hash(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256 (names the calibration cache)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def label_run(snapshot: Any, *, name: str, tags: list[str], metadata: dict[str, str]) -> Any:
    """The snapshot with its name, tags and metadata (shown in the UI, usable as filters)."""
    from evidently.core.report import Snapshot

    data = snapshot.dump_dict()
    data.update(name=name, tags=tags, metadata=metadata)
    return Snapshot.load_dict(data)


def add_to_workspace(
    workspace_dir: Path, snapshot: Any, *, site: str | None, monitor: MonitorParams
) -> dict[str, str]:
    """Add the run to the site's project of the Evidently workspace.

    A missing project is created, and every project gets its dashboard panels
    (:mod:`~cxr_triage.monitoring.dashboard`).

    Returns:
        ``workspace``, ``project``, ``project_id`` and ``run_id``.
    """
    project = project_name(site)
    workspace_dir.mkdir(parents=True, exist_ok=True)
    with quiet():
        from evidently.ui.workspace import Workspace

        workspace = Workspace.create(str(workspace_dir))
        found = workspace.search_project(project)
        target = (
            found[0]
            if found
            else workspace.create_project(
                project,
                description="Chest X-ray triage drift monitoring (cxr-triage monitor)",
            )
        )
        add_panels(target, site, monitor)
        ref = workspace.add_run(target.id, snapshot, include_data=False)
    return {
        "workspace": str(workspace_dir),
        "project": project,
        "project_id": str(target.id),
        "run_id": str(ref.id),
    }


def insufficient_html(reason: str, facts: dict[str, Any]) -> str:
    """A small self-contained page for a run without an Evidently report."""
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in facts.items()
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>cxr-triage drift: "
        "insufficient data</title></head><body><h1>Insufficient data</h1>"
        f"<p>{html.escape(reason)}</p><table>{rows}</table></body></html>\n"
    )
