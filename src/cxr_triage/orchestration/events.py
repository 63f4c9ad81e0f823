"""The events the flows emit and the alert texts the automations send, in one place.

Event names and resource ids are the contract between the flows (which emit) and the
automations (which match and notify): ``flows/alerts.py`` builds its triggers from
:func:`alert_specs`. A flow's own event carries its alert, ready to send (``payload.title``,
``payload.text``, see :mod:`cxr_triage.orchestration.alerts`); Prefect's flow-run events are
worded by the templates here.

Repeats of the same alert within the cool-down are folded into the first: each automation
buckets its events by an alert key (the resource label :data:`ALERT_KEY_LABEL`: kind, site and
model for drift; flow and state message for failures; status and candidate for retraining),
and a Reactive trigger fires once per bucket and cool-down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxr_triage.orchestration.alerts import AlertSettings, figure

__all__ = [
    "ALERTS",
    "ALERT_KEY_LABEL",
    "DRIFT_EVENT",
    "DRIFT_RESOURCE_PREFIX",
    "MODEL_RESOURCE",
    "PERFORMANCE_EVENT",
    "PERFORMANCE_RESOURCE_PREFIX",
    "RETRAINING_EVENT",
    "AlertSpec",
    "alert_specs",
    "drift_event",
    "performance_event",
    "retraining_event",
]

DRIFT_EVENT = "cxr.drift.detected"
DRIFT_RESOURCE_PREFIX = "cxr.monitor."
PERFORMANCE_EVENT = "cxr.performance.below-target"
PERFORMANCE_RESOURCE_PREFIX = "cxr.performance."
RETRAINING_EVENT = "cxr.retraining.finished"
MODEL_RESOURCE = "cxr.model.cxr-triage"
ALERT_KEY_LABEL = "cxr.alert-key"
_TITLE = "[cxr-triage]"


def drift_event(
    summary: Mapping[str, Any],
    *,
    settings: AlertSettings | None = None,
    flow_run_id: str | None = None,
) -> dict[str, Any]:
    """Arguments of ``prefect.events.emit_event`` for a drift finding, with its alert.

    Args:
        summary: the drift check's ``summary.json`` (``DriftSummary.to_json()``).
        settings: base URLs of the links (default: :meth:`AlertSettings.from_env`).
        flow_run_id: the monitoring flow run, linked in the alert.

    Returns:
        ``event``, ``resource`` (``cxr.monitor.<site>``, with the alert key) and ``payload``:
        ``title``, ``text``, and the figures (rounded) and links on their own.
    """
    settings = settings or AlertSettings.from_env()
    report_url = _report_url(summary, settings)
    run_url = settings.run_url(flow_run_id) if flow_run_id else None
    text = [
        f"Evidence: {'; '.join(_drift_evidence(summary))}",
        f"Data: {_data_line(summary)}",
        *_links(report=report_url, run=run_url),
    ]
    return _own_alert(
        DRIFT_EVENT,
        summary,
        kind="drift",
        resource=(DRIFT_RESOURCE_PREFIX, "drift monitor"),
        headline="drift detected",
        text=text,
        verdict=summary.get("status"),
        drift_share=_rounded(summary.get("drift_share")),
        failed_tests=summary.get("failed_tests"),
        n_current=summary.get("n_current"),
        report_url=report_url,
        run_url=run_url,
    )


def _own_alert(
    event: str,
    summary: Mapping[str, Any],
    *,
    kind: str,
    resource: tuple[str, str],
    headline: str,
    text: list[str],
    **figures: Any,
) -> dict[str, Any]:
    """An event of ours carrying its alert: the title names what, where and which model."""
    site, model = summary.get("site"), summary.get("model_tag")
    prefix, name = resource
    return {
        "event": event,
        "resource": {
            "prefect.resource.id": f"{prefix}{site or 'all'}",
            "prefect.resource.name": f"{name} {site or 'all sites'}",
            ALERT_KEY_LABEL: f"{kind}|{site or 'all'}|{model}",
        },
        "payload": {
            "title": f"{_TITLE} {headline} at {site or 'all sites'}, model {model}",
            "text": "\n".join(text),
            "site": site,
            "model_tag": model,
            **figures,
        },
    }


def performance_event(
    summary: Mapping[str, Any],
    *,
    settings: AlertSettings | None = None,
    flow_run_id: str | None = None,
) -> dict[str, Any]:
    """Arguments of ``emit_event`` when the realised sensitivity fell below the target.

    Args:
        summary: the drift check's ``summary.json``, with its ``performance``.
        settings: base URLs of the links (default: :meth:`AlertSettings.from_env`).
        flow_run_id: the monitoring flow run, linked in the alert.
    """
    settings = settings or AlertSettings.from_env()
    perf = summary.get("performance") or {}
    sens, spec, ece = (perf.get(k) or {} for k in ("sensitivity", "specificity", "ece"))
    run_url = settings.run_url(flow_run_id) if flow_run_id else None
    text = [
        f"Evidence: realised sensitivity {_with_ci(sens)} against the target "
        f"{figure(perf.get('target_sensitivity'))} ({perf.get('target_source')}) at the "
        f"threshold {figure(perf.get('threshold'))}; specificity {_with_ci(spec)}; ECE "
        f"{_with_ci(ece)}; mean predicted {figure(perf.get('mean_predicted'))} vs observed "
        f"abnormal rate {figure(perf.get('observed_abnormal_rate'))}",
        f"Reads: {perf.get('n_abnormal')} abnormal and {perf.get('n_normal')} normal, of "
        f"{_data_line(summary)}",
        *_links(report=_report_url(summary, settings), run=run_url),
    ]
    return _own_alert(
        PERFORMANCE_EVENT,
        summary,
        kind="performance",
        resource=(PERFORMANCE_RESOURCE_PREFIX, "realised performance"),
        headline="sensitivity below target",
        text=text,
        sensitivity=_rounded(sens.get("estimate")),
        sensitivity_ci_low=_rounded(sens.get("low")),
        target_sensitivity=perf.get("target_sensitivity"),
        specificity=_rounded(spec.get("estimate")),
        n_abnormal_reads=perf.get("n_abnormal"),
        run_url=run_url,
    )


def _with_ci(estimate: Mapping[str, Any]) -> str:
    if estimate.get("estimate") is None:
        return "n/a"
    return (
        f"{figure(estimate['estimate'])} (95% CI {figure(estimate.get('low'))}-"
        f"{figure(estimate.get('high'))})"
    )


def _rounded(value: Any, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def _report_url(summary: Mapping[str, Any], settings: AlertSettings) -> str | None:
    reports = summary.get("reports") or {}
    if not (reports.get("project_id") and reports.get("run_id")):
        return None
    return settings.report_url(reports["project_id"], reports["run_id"])


def _links(**urls: str | None) -> list[str]:
    names = {"report": "Evidently report", "run": "Prefect run"}
    return [f"{names[key]}: {url}" for key, url in urls.items() if url]


def _drift_evidence(summary: Mapping[str, Any]) -> list[str]:
    """The three tests' figures, rounded: columns, prediction, embeddings."""
    pred = summary.get("prediction_drift") or {}
    emb = summary.get("embedding_drift") or {}
    drifted = summary.get("drifted_columns") or []
    share, limit = summary.get("drift_share"), summary.get("drift_share_threshold")
    return [
        f"{len(drifted)}/{summary.get('n_columns')} columns drifted (share {figure(share)}, "
        f"limit {figure(limit)})",
        f"prediction {'drifted' if pred.get('drift') else 'stable'} "
        f"({pred.get('method')} {figure(pred.get('score'))})",
        f"embeddings {'drifted' if emb.get('drift') else 'stable'} ({emb.get('method')} "
        f"{figure(emb.get('score'))}, threshold {figure(emb.get('threshold'))})",
    ]


def _data_line(summary: Mapping[str, Any]) -> str:
    """What was compared: the current rows and their source, the reference scope."""
    origin = (summary.get("source") or {}).get("description") or "rows in hand"
    return (
        f"{summary.get('n_current')} current rows ({origin}) vs {summary.get('scope')} "
        f"reference ({summary.get('n_reference')} rows)"
    )


def retraining_event(decision: dict[str, Any], one_line: str) -> dict[str, Any]:
    """Arguments of ``prefect.events.emit_event`` for a retraining result (promoted or not)."""
    evidence = decision.get("evidence", {})
    diff = evidence.get("auroc_difference", {})
    return {
        "event": RETRAINING_EVENT,
        "resource": {
            "prefect.resource.id": MODEL_RESOURCE,
            "prefect.resource.name": "cxr-triage model",
            ALERT_KEY_LABEL: f"retraining|{decision.get('status')}|"
            f"{decision.get('candidate_tag')}",
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
    """An automation: ``name``, ``event`` (glob), ``resource`` (glob), ``for_each`` (the labels
    that make two alerts the same), ``subject``, ``body`` (Jinja, rendered by Prefect)."""


# Prefect's flow-run events: the state message's first line, and the run's page.
_FIRST_LINE = "{{ (flow_run.state.message or 'no message').splitlines()[0] }}"
_FLOW_RUN_KEY = {"related:flow:prefect.resource.id", "prefect.state-message"}


def alert_specs(settings: AlertSettings) -> tuple[AlertSpec, ...]:
    """The automations, with the links of ``settings`` (rendered by Prefect's Jinja)."""
    run_link = f"Prefect run: {settings.prefect_ui}/runs/flow-run/{{{{ flow_run.id }}}}"
    own_alert = {"subject": "{{ event.payload.title }}", "body": "{{ event.payload.text }}"}
    return (
        AlertSpec(
            name="cxr-flow-run-failed",
            event="prefect.flow-run.Failed",
            resource="prefect.flow-run.*",
            for_each=_FLOW_RUN_KEY,
            subject=f"{_TITLE} flow run failed: {{{{ flow.name }}}}/{{{{ flow_run.name }}}}",
            body=f"{_FIRST_LINE}\n{run_link}",
        ),
        AlertSpec(
            name="cxr-flow-run-crashed",
            event="prefect.flow-run.Crashed",
            resource="prefect.flow-run.*",
            for_each=_FLOW_RUN_KEY,
            subject=f"{_TITLE} flow run crashed: {{{{ flow.name }}}}/{{{{ flow_run.name }}}}",
            body=f"{_FIRST_LINE}\n{run_link}",
        ),
        AlertSpec(
            name="cxr-drift-detected",
            event=DRIFT_EVENT,
            resource=f"{DRIFT_RESOURCE_PREFIX}*",
            for_each={ALERT_KEY_LABEL},
            **own_alert,
        ),
        AlertSpec(
            name="cxr-sensitivity-below-target",
            event=PERFORMANCE_EVENT,
            resource=f"{PERFORMANCE_RESOURCE_PREFIX}*",
            for_each={ALERT_KEY_LABEL},
            **own_alert,
        ),
        AlertSpec(
            name="cxr-retraining-result",
            event=RETRAINING_EVENT,
            resource=MODEL_RESOURCE,
            for_each={ALERT_KEY_LABEL},
            subject=f"{_TITLE} retraining: {{{{ event.payload.status }}}}",
            body="{{ event.payload.summary }}",
        ),
    )


# The automations with the default settings: their names and events (flows/alerts.py creates
# them with the environment's settings).
ALERTS: tuple[AlertSpec, ...] = alert_specs(AlertSettings())
