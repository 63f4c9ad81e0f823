"""One drift check: :func:`check_drift`, which ``cxr-triage monitor`` and the monitoring flow call.

Both only format what it returns (:class:`~cxr_triage.monitoring.summary.DriftSummary`), so
they compare the same data with the same package and write the same summary. The steps: choose
the package, load the current rows, prepare the comparison, grade fed-back reads, decide (the
Evidently reports, or "insufficient data"), apply retention, write the run and the workspace.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_triage.atomic import atomic_dir, write_json_atomically
from cxr_triage.config import MonitorParams, Params
from cxr_triage.inference.layout import REFERENCE_FILE, read_package_info
from cxr_triage.monitoring.current import CurrentData, CurrentSource, LogWindow
from cxr_triage.monitoring.evidently_env import Timer, quiet
from cxr_triage.monitoring.frames import (
    Comparison,
    load_reference,
    prepare_comparison,
    value_counts,
)
from cxr_triage.monitoring.outputs import (
    add_to_workspace,
    file_hash,
    insufficient_html,
    label_run,
    project_name,
    run_dir,
)
from cxr_triage.monitoring.performance import RealisedPerformance, realised_performance
from cxr_triage.monitoring.report import evaluate
from cxr_triage.monitoring.retention import apply_retention
from cxr_triage.monitoring.summary import DriftSummary, Reports, Verdict
from cxr_triage.state import state_layout

if TYPE_CHECKING:
    from cxr_triage.inference.registry import ResolvedPackage

__all__ = ["check_drift"]

log = logging.getLogger(__name__)


def check_drift(
    params: Params,
    source: CurrentSource,
    *,
    package: str | os.PathLike[str] | None = None,
    model_tag: str | None = None,
    site: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> DriftSummary:
    """Compare current data with a package's reference; write the report and the summary.

    Args:
        params: ``params.monitor`` (tests, thresholds) and ``params.seed`` (sampling).
        source: the current data: a :class:`~cxr_triage.monitoring.current.LogWindow`, an
            :class:`~cxr_triage.monitoring.current.ImageFolder` (scored with the package), or
            :class:`~cxr_triage.monitoring.current.CurrentData` already in hand.
        package: a package folder; with ``model_tag``, chosen by
            :func:`cxr_triage.inference.registry.resolve_package` (default: the serving
            model).
        model_tag: a model tag in the model store.
        site: the site the current data is from: only its rows are compared (and its
            reference rows, when there are enough). None: inferred when the current data holds
            a single known site.
        out_dir: the monitoring folder (``runs/``, ``workspace/``, ``calibration/``); default
            the state folder's (:func:`cxr_triage.state.state_layout`).

    Returns:
        The summary, as written to the run's ``summary.json``.

    Raises:
        DataError: no reference, the current data lacks monitoring columns, or ``site`` has no
            rows in it; an unreadable log or folder.
        ConfigError: no such package or tag; a ``monitor`` stat test name is unknown.
    """
    from cxr_triage.inference.registry import resolve_package  # imports torch: not at import

    started = time.perf_counter()
    resolved = resolve_package(package, model_tag)
    current = source.load(resolved.path, site)
    out = Path(out_dir) if out_dir else state_layout().monitor_dir
    comparison = prepare_comparison(
        load_reference(resolved.path),
        current.rows,
        site=site,
        min_reference_rows=params.monitor.min_reference_rows,
    )
    performance = _performance(comparison, current, resolved, params)
    created = datetime.now(UTC)
    folder = run_dir(out, created, comparison.site)
    with atomic_dir(folder) as tmp:
        verdict, snapshot, timings = _decide(comparison, params, resolved, out, current)
        summary = _summary(created, resolved, comparison, current, params.monitor, verdict, folder)
        retention = apply_retention(params.monitor, out_dir=out, log_path=_log_read(source))
        summary = replace(summary, performance=performance, retention=retention)
        if snapshot is None:
            _write_insufficient_page(tmp / "report.html", summary)
        else:
            summary = _publish(
                snapshot, summary, tmp / "report.html", out, timings, started, params.monitor
            )
        write_json_atomically(tmp / "summary.json", summary.to_json())
    log.debug("%s", summary.one_line())  # the callers print or log it: once
    return summary


def _decide(
    comparison: Comparison,
    params: Params,
    resolved: ResolvedPackage,
    out: Path,
    current: CurrentData,
) -> tuple[Verdict, Any | None, dict[str, float]]:
    """The verdict, the Evidently snapshot (None without a run) and the seconds per step."""
    monitor = params.monitor
    reason = _insufficient(len(comparison.current), len(comparison.reference), monitor)
    if reason is not None:
        note = current.source.get("note")  # e.g. no prediction log yet
        reason = f"{note}; {reason}" if note else reason
        verdict = Verdict.insufficient(
            reason, drift_share=monitor.drift_share, embedding_method=monitor.embedding_method
        )
        return verdict, None, {}
    evaluation = evaluate(
        comparison,
        monitor,
        seed=params.seed,
        calibration_dir=out / "calibration",
        reference_key=file_hash(resolved.path / REFERENCE_FILE),
    )
    return evaluation.verdict, evaluation.snapshot, evaluation.timings


def _log_read(source: CurrentSource) -> Path | None:
    return source.path if isinstance(source, LogWindow) else None


def _performance(
    comparison: Comparison, current: CurrentData, resolved: ResolvedPackage, params: Params
) -> RealisedPerformance | None:
    """The window's predictions graded by their fed-back reads (prediction-log windows only)."""
    if current.source.get("kind") != "log":
        return None
    return realised_performance(
        comparison.current,
        model_tag=resolved.tag,
        package_info=read_package_info(resolved.path),
        params=params,
    )


def _insufficient(n_current: int, n_reference: int, monitor: MonitorParams) -> str | None:
    if n_current < monitor.min_current_rows:
        return (
            f"{n_current} current rows < monitor.min_current_rows ({monitor.min_current_rows}); "
            "widen the window (--since/--last) or add images"
        )
    if n_reference < monitor.min_reference_rows:
        return (
            f"{n_reference} reference rows < monitor.min_reference_rows "
            f"({monitor.min_reference_rows}); package a model with more val/test images"
        )
    return None


def _summary(
    created: datetime,
    resolved: ResolvedPackage,
    comparison: Comparison,
    current: CurrentData,
    monitor: MonitorParams,
    verdict: Verdict,
    folder: Path,
) -> DriftSummary:
    """The summary of a run in ``folder`` (its workspace run is added by :func:`_publish`)."""
    return DriftSummary(
        created_at=created.isoformat(timespec="seconds"),
        model_tag=resolved.tag,
        package_dir=str(resolved.path),
        package_chosen_by=resolved.chosen_by,
        site=comparison.site,
        scope=comparison.scope,
        scope_reason=comparison.scope_reason,
        n_reference=len(comparison.reference),
        n_current=len(comparison.current),
        n_current_other_sites=comparison.n_current_other_sites,
        current_model_tags=value_counts(comparison.current, "model_tag"),
        source=dict(current.source),
        retrain_on_drift=monitor.retrain_on_drift,
        verdict=verdict,
        reports=Reports(html=str(folder / "report.html"), json=str(folder / "summary.json")),
    )


def _write_insufficient_page(path: Path, summary: DriftSummary) -> None:
    facts = {
        "created_at": summary.created_at,
        "site": summary.site,
        "scope": summary.scope,
        "n_reference": summary.n_reference,
        "n_current": summary.n_current,
        "model_tag": summary.model_tag,
    }
    path.write_text(insufficient_html(str(summary.verdict.reason), facts), encoding="utf-8")


def _publish(
    snapshot: Any,
    summary: DriftSummary,
    html_path: Path,
    out: Path,
    timings: dict[str, float],
    started: float,
    monitor: MonitorParams,
) -> DriftSummary:
    """Write the HTML report, add the run to the workspace; the summary with both recorded."""
    snapshot = label_run(
        snapshot,
        name=f"{project_name(summary.site)} {summary.created_at} {summary.status}",
        tags=[
            f"site:{summary.site or 'all'}",
            f"model:{summary.model_tag}",
            f"verdict:{summary.status}",
        ],
        metadata={
            "site": summary.site or "all",
            "model_tag": str(summary.model_tag),
            "verdict": summary.status,
            "window": str(summary.source.get("description", "")),
            "scope": summary.scope,
        },
    )
    with Timer(timings, "html"), quiet():
        snapshot.save_html(str(html_path))  # a Path silently writes nothing (STACK §4)
    with Timer(timings, "workspace"):
        workspace = add_to_workspace(
            out / "workspace", snapshot, site=summary.site, monitor=monitor
        )
    timings["total"] = time.perf_counter() - started
    return replace(
        summary,
        reports=replace(summary.reports, **workspace),
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )
