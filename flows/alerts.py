"""Alerts: a webhook block and the automations that post to it (idempotent).

Automations (names in :data:`cxr_triage.orchestration.events.ALERTS`): any flow run Failed or
Crashed (the exception's first line and the run's link); drift detected (``cxr.drift.detected``:
site, model, rounded figures, links to the Evidently report and the run); the retraining result
(``cxr.retraining.finished``, promoted or not). Repeats of the same alert within the cool-down
are folded into the first. They need a real ``prefect server start`` (its event services
evaluate the triggers). Re-running replaces the block and the automations of the same names, so
there are never duplicates. Settings: :mod:`cxr_triage.orchestration.alerts`.

    CXR_TRIAGE_ALERT_WEBHOOK=https://hooks.example/... python -m flows.alerts
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

from cxr_triage.errors import ConfigError
from cxr_triage.orchestration.alerts import AlertSettings
from cxr_triage.orchestration.events import ALERTS, alert_specs

__all__ = ["BLOCK_NAME", "WEBHOOK_ENV", "remove_alerts", "setup_alerts"]

WEBHOOK_ENV = "CXR_TRIAGE_ALERT_WEBHOOK"
BLOCK_NAME = "cxr-triage-alerts"


def remove_alerts() -> int:
    """Delete the automations this module creates; return how many were deleted."""
    deleted = 0
    with get_client(sync_client=True) as client:
        for spec in ALERTS:
            for automation in client.read_automations_by_name(spec["name"]):
                client.delete_automation(automation.id)
                deleted += 1
    return deleted


def setup_alerts(url: str | None = None, settings: AlertSettings | None = None) -> dict[str, Any]:
    """Create (or replace) the webhook block and the alert automations.

    Args:
        url: the webhook; default ``$CXR_TRIAGE_ALERT_WEBHOOK``. It receives a JSON POST
            ``{"title": ..., "text": ...}`` per alert (Slack/Teams/Mattermost-style hooks accept
            ``text``).
        settings: link base URLs and the cool-down (default: from the environment, see
            :mod:`cxr_triage.orchestration.alerts`).

    Returns:
        ``block_id`` and the automation ``names``.

    Raises:
        ConfigError: no URL given and the environment variable is unset; a bad setting.
    """
    settings = settings or AlertSettings.from_env()
    url = url or os.environ.get(WEBHOOK_ENV)
    if not url:
        raise ConfigError(
            f"no alert webhook: set {WEBHOOK_ENV}=https://... (the maintainers' hook) or pass "
            "--webhook; alerts are POSTed there as JSON {title, text}"
        )
    block_id = CustomWebhookNotificationBlock(
        name="cxr-triage",
        url=url,
        json_data={"title": "{{subject}}", "text": "{{body}}"},
    ).save(BLOCK_NAME, overwrite=True)
    remove_alerts()
    for spec in alert_specs(settings):
        Automation(
            name=spec["name"],
            description="cxr-triage alert (created by flows/alerts.py)",
            trigger=EventTrigger(
                expect={spec["event"]},
                match={"prefect.resource.id": spec["resource"]},
                for_each=spec["for_each"],
                posture=Posture.Reactive,
                threshold=1,
                within=settings.cooldown,  # fires once, then ignores repeats this long
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id, subject=spec["subject"], body=spec["body"]
                )
            ],
        ).create()
    return {"block_id": str(block_id), "names": [spec["name"] for spec in ALERTS]}


def main() -> None:  # pragma: no cover - CLI wrapper
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhook", default=None, help=f"default: ${WEBHOOK_ENV}")
    parser.add_argument("--remove", action="store_true", help="delete the automations")
    args = parser.parse_args()
    if args.remove:
        print(f"deleted {remove_alerts()} automation(s)")
        return
    result = setup_alerts(args.webhook)
    print(f"alerts set up: {', '.join(result['names'])} -> block {BLOCK_NAME}")


if __name__ == "__main__":
    main()
