"""What an alert says and where its links point: settings from the environment, and the text.

Every alert reaches the maintainers' webhook as JSON ``{"title": ..., "text": ...}``
(``flows/alerts.py``): the title says what happened, where and to which model; the text gives
the figures (rounded), then one link per place to look, each once. Links are built from
configurable base URLs, so they work from a laptop or behind a reverse proxy alike.

Settings (read when the alerts are set up and when an event is emitted, never at import):

=================================== ======================================================
``CXR_TRIAGE_PREFECT_UI_URL``       Prefect UI base for run links; default ``PREFECT_UI_URL``,
                                    else ``PREFECT_API_URL`` without ``/api``, else
                                    ``http://127.0.0.1:4200``
``CXR_TRIAGE_EVIDENTLY_UI_URL``     ``evidently ui`` base for report links; default
                                    ``http://127.0.0.1:8000``
``CXR_TRIAGE_ALERT_COOLDOWN_MINUTES`` repeats of the same alert within this many minutes are
                                    folded into the first (not sent again); default 60, 0 sends
                                    every repeat
=================================== ======================================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cxr_triage.errors import ConfigError

__all__ = [
    "COOLDOWN_ENV",
    "EVIDENTLY_UI_ENV",
    "PREFECT_UI_ENV",
    "AlertSettings",
    "figure",
]

PREFECT_UI_ENV = "CXR_TRIAGE_PREFECT_UI_URL"
EVIDENTLY_UI_ENV = "CXR_TRIAGE_EVIDENTLY_UI_URL"
COOLDOWN_ENV = "CXR_TRIAGE_ALERT_COOLDOWN_MINUTES"
DEFAULT_PREFECT_UI = "http://127.0.0.1:4200"
DEFAULT_EVIDENTLY_UI = "http://127.0.0.1:8000"
DEFAULT_COOLDOWN_MINUTES = 60.0


def _base_url(variable: str, value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(
            f"{variable}={value!r} is not an http(s) URL; set it to the address people open, "
            "e.g. http://monitoring.hospital.example:8000"
        )
    return value


def _default_prefect_ui(environ: Mapping[str, str]) -> str:
    if environ.get("PREFECT_UI_URL", "").strip():
        return environ["PREFECT_UI_URL"]
    api = environ.get("PREFECT_API_URL", "").strip().rstrip("/")
    if api.endswith("/api"):
        return api[: -len("/api")]
    return DEFAULT_PREFECT_UI


@dataclass(frozen=True)
class AlertSettings:
    """Base URLs of the links in alerts, and the cool-down that folds repeats.

    Attributes:
        prefect_ui: the Prefect UI (run pages: ``<base>/runs/flow-run/<id>``).
        evidently_ui: ``evidently ui`` (report pages:
            ``<base>/projects/<project id>/reports/<run id>``).
        cooldown: repeats of the same alert within this time are folded into the first.
    """

    prefect_ui: str = DEFAULT_PREFECT_UI
    evidently_ui: str = DEFAULT_EVIDENTLY_UI
    cooldown: timedelta = timedelta(minutes=DEFAULT_COOLDOWN_MINUTES)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AlertSettings:
        """The settings the environment gives (see the module docstring).

        Raises:
            ConfigError: a URL that is not http(s), or a cool-down that is not a number >= 0.
        """
        env = os.environ if environ is None else environ
        raw = env.get(COOLDOWN_ENV, "").strip() or str(DEFAULT_COOLDOWN_MINUTES)
        try:
            minutes = float(raw)
        except ValueError:
            minutes = -1.0
        if not (math.isfinite(minutes) and minutes >= 0):
            raise ConfigError(
                f"{COOLDOWN_ENV}={raw!r}: expected minutes >= 0 (0 sends every repeat)"
            )
        return cls(
            prefect_ui=_base_url(
                PREFECT_UI_ENV, env.get(PREFECT_UI_ENV) or _default_prefect_ui(env)
            ),
            evidently_ui=_base_url(
                EVIDENTLY_UI_ENV, env.get(EVIDENTLY_UI_ENV) or DEFAULT_EVIDENTLY_UI
            ),
            cooldown=timedelta(minutes=minutes),
        )

    def run_url(self, flow_run_id: Any) -> str:
        """The Prefect UI page of a flow run."""
        return f"{self.prefect_ui}/runs/flow-run/{flow_run_id}"

    def report_url(self, project_id: Any, run_id: Any) -> str:
        """The ``evidently ui`` page of a report (a workspace run)."""
        return f"{self.evidently_ui}/projects/{project_id}/reports/{run_id}"


def figure(value: Any) -> str:
    """A figure for people: 3 significant digits (whole numbers from 1000 on).

    None (a figure that could not be computed) reads "n/a".
    """
    if value is None:
        return "n/a"
    number = float(value)
    return f"{number:.3g}" if abs(number) < 1000 else f"{number:.0f}"
