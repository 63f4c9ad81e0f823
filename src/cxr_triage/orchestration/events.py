"""The events the flows emit and the alert texts the automations send, in one place.

Event names and resource ids are the contract between the flows (which emit) and the
automations (which match and notify): ``flows/alerts.py`` builds its triggers from these.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ALERTS",
    "DRIFT_EVENT",
    "DRIFT_RESOURCE_PREFIX",
    "MODEL_RESOURCE",
    "RETRAINING_EVENT",
    "AlertSpec",
    "drift_event",
    "retraining_event",
]

DRIFT_EVENT = "cxr.drift.detected"
DRIFT_RESOURCE_PREFIX = "cxr.monitor."
RETRAINING_EVENT = "cxr.retraining.finished"
MODEL_RESOURCE = "cxr.model.cxr-triage"


def drift_event(summary: dict[str, Any], one_line: str) -> dict[str, Any]:
    """Arguments of ``prefect.events.emit_event`` for a drift finding.

    Args:
        summary: the drift check's ``summary.json`` (``DriftSummary.to_json()``): site, drift
            share, report paths...
        one_line: the check's one-line description.
    """
    site = summary.get("site")
    reports = summary.get("reports") or {}
    payload = {
        "summary": one_line,
        "drift_share": summary.get("drift_share"),
        "drifted_columns": summary.get("drifted_columns"),
        "n_current": summary.get("n_current"),
        "failed_tests": summary.get("failed_tests"),
        "report_html": reports.get("html"),
        "report_json": reports.get("json"),
    }
    return {
        "event": DRIFT_EVENT,
        "resource": {
            "prefect.resource.id": f"{DRIFT_RESOURCE_PREFIX}{site or 'all'}",
            "prefect.resource.name": f"drift monitor {site or 'all sites'}",
        },
        "payload": payload,
    }


def retraining_event(decision: dict[str, Any], one_line: str) -> dict[str, Any]:
    """Arguments of ``prefect.events.emit_event`` for a retraining result (promoted or not)."""
    evidence = decision.get("evidence", {})
    diff = evidence.get("auroc_difference", {})
    return {
        "event": RETRAINING_EVENT,
        "resource": {
            "prefect.resource.id": MODEL_RESOURCE,
            "prefect.resource.name": "cxr-triage model",
        },
        "payload": {
            "status": decision.get("status"),
            "promoted": decision.get("promoted"),
            "summary": one_line,
            "candidate_tag": decision.get("candidate_tag"),
            "serving_tag": decision.get("serving_tag"),
            "serving_auroc": evidence.get("serving_auroc"),
            "candidate_auroc": evidence.get("candidate_auroc"),
            "auroc_difference_ci_low": diff.get("low"),
            "sensitivity_at_threshold": evidence.get("candidate_at_threshold", {}).get(
                "sensitivity"
            ),
        },
    }


class AlertSpec(dict):
    """An automation: ``name``, ``event`` (glob), ``resource`` (glob), ``subject``, ``body``."""


# Jinja templates rendered by Prefect's SendNotification action (STACK.md §1).
ALERTS: tuple[AlertSpec, ...] = (
    AlertSpec(
        name="cxr-flow-run-failed",
        event="prefect.flow-run.Failed",
        resource="prefect.flow-run.*",
        subject="[cxr-triage] flow run failed: {{ flow.name }}/{{ flow_run.name }}",
        body="State {{ flow_run.state.name }}: {{ flow_run.state.message }}",
    ),
    AlertSpec(
        name="cxr-flow-run-crashed",
        event="prefect.flow-run.Crashed",
        resource="prefect.flow-run.*",
        subject="[cxr-triage] flow run crashed: {{ flow.name }}/{{ flow_run.name }}",
        body="State {{ flow_run.state.name }}: {{ flow_run.state.message }}",
    ),
    AlertSpec(
        name="cxr-drift-detected",
        event=DRIFT_EVENT,
        resource=f"{DRIFT_RESOURCE_PREFIX}*",
        subject="[cxr-triage] drift detected on {{ event.resource.id }}",
        body="{{ event.payload.summary }} | drift share {{ event.payload.drift_share }} | "
        "report {{ event.payload.report_html }}",
    ),
    AlertSpec(
        name="cxr-retraining-result",
        event=RETRAINING_EVENT,
        resource=MODEL_RESOURCE,
        subject="[cxr-triage] retraining: {{ event.payload.status }}",
        body="{{ event.payload.summary }}",
    ),
)
