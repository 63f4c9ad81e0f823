"""Alert settings and texts: what a maintainer reads, and where its links point."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from cxr_triage.errors import ConfigError
from cxr_triage.orchestration.alerts import AlertSettings, figure
from cxr_triage.orchestration.events import (
    ALERT_KEY_LABEL,
    DRIFT_EVENT,
    alert_specs,
    drift_event,
)
from helpers.summaries import drift_summary

SETTINGS = AlertSettings(
    prefect_ui="https://prefect.hospital.example",
    evidently_ui="https://drift.hospital.example",
    cooldown=timedelta(minutes=30),
)
RUN_ID = "5b9f1c9e-3a57-4d0e-9f57-2f1f4e2f3c1a"


def test_drift_alert_title_says_site_verdict_and_model():
    payload = drift_event(drift_summary(), settings=SETTINGS, flow_run_id=RUN_ID)["payload"]

    assert payload["title"] == (
        "[cxr-triage] drift detected at new_hospital, model cxr-triage:4a46c272ed15a8b8"
    )


def test_drift_alert_text_has_rounded_figures_and_each_link_once():
    event = drift_event(drift_summary(), settings=SETTINGS, flow_run_id=RUN_ID)
    text = event["payload"]["text"]

    assert "share 0.905, limit 0.3" in text and "0.9047" not in text
    assert "mmd 0.621, threshold 0.0215" in text and "K-S p_value 5.63e-37" in text
    figures = re.findall(r"\d+\.\d+(?:e-?\d+)?", " ".join(text.splitlines()[:2]))
    assert figures and all(len(f.split("e")[0].replace(".", "").lstrip("0")) <= 3 for f in figures)
    report = (
        "https://drift.hospital.example/projects/0197a6f3-0d6e-7c2a-9b1e-5c7e0a4b2d11/reports/"
        "0197a6f3-1a2b-7c3d-8e4f-5a6b7c8d9e0f"
    )
    assert text.splitlines()[-2:] == [
        f"Evidently report: {report}",
        f"Prefect run: https://prefect.hospital.example/runs/flow-run/{RUN_ID}",
    ]
    # No field twice: the title's site, verdict and model are not repeated, and the report is
    # a link, not a path on the server.
    for said_in_title in ("new_hospital", "cxr-triage:4a46c272ed15a8b8", "drift detected"):
        assert said_in_title not in text
    assert "report.html" not in text and text.count(report) == 1
    assert event["payload"]["drift_share"] == 0.905
    assert "60 current rows (images in /data/incoming/images, 2 unreadable)" in text


def test_drift_alert_key_folds_repeats_of_the_same_site_and_model_only():
    def key(**overrides):
        return drift_event(drift_summary(**overrides), settings=SETTINGS)["resource"][
            ALERT_KEY_LABEL
        ]

    assert key() == key(drift_share=0.5)  # the same alert with other figures: folded
    assert key() != key(site="hospital_b") and key() != key(model_tag="cxr-triage:new")
    event = drift_event(drift_summary(site=None), settings=SETTINGS)
    assert event["event"] == DRIFT_EVENT
    assert event["resource"]["prefect.resource.id"] == "cxr.monitor.all"
    assert "at all sites" in event["payload"]["title"]


def test_failure_alerts_give_the_first_line_and_the_run_link():
    specs = {s["name"]: s for s in alert_specs(SETTINGS)}
    failed = specs["cxr-flow-run-failed"]

    first_line, link = failed["body"].split("\n")
    assert "splitlines()[0]" in first_line
    assert link == (
        "Prefect run: https://prefect.hospital.example/runs/flow-run/{{ flow_run.id }}"
    )
    assert failed["for_each"] == {"related:flow:prefect.resource.id", "prefect.state-message"}
    assert all(ALERT_KEY_LABEL in s["for_each"] for s in specs.values() if "cxr." in s["event"])


def test_alert_settings_come_from_the_environment():
    assert AlertSettings.from_env({}) == AlertSettings()
    derived = AlertSettings.from_env({"PREFECT_API_URL": "http://10.0.0.5:4200/api"})
    assert derived.prefect_ui == "http://10.0.0.5:4200"
    given = AlertSettings.from_env(
        {
            "CXR_TRIAGE_PREFECT_UI_URL": "https://prefect.example/",
            "CXR_TRIAGE_EVIDENTLY_UI_URL": "https://drift.example",
            "CXR_TRIAGE_ALERT_COOLDOWN_MINUTES": "0",
        }
    )
    assert given.run_url("r1") == "https://prefect.example/runs/flow-run/r1"
    assert given.report_url("p", "r") == "https://drift.example/projects/p/reports/r"
    assert given.cooldown == timedelta(0)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CXR_TRIAGE_EVIDENTLY_UI_URL": "drift.example:8000"}, "not an http"),
        ({"CXR_TRIAGE_ALERT_COOLDOWN_MINUTES": "soon"}, "minutes >= 0"),
        ({"CXR_TRIAGE_ALERT_COOLDOWN_MINUTES": "-5"}, "minutes >= 0"),
    ],
)
def test_alert_settings_refuse_what_would_break_links(environ, message):
    with pytest.raises(ConfigError, match=message):
        AlertSettings.from_env(environ)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.9047619047619048, "0.905"),
        (0.02148812, "0.0215"),
        (5.6314e-37, "5.63e-37"),
        (12.0, "12"),
        (12345.6, "12346"),
        (None, "n/a"),
    ],
)
def test_figures_are_rounded_for_people(value, text):
    assert figure(value) == text
