"""The panels every workspace project gets: one project per site, its story over time.

Built with Evidently's dashboard API (``evidently.sdk.panels``, ``PanelMetric``); each panel
plots a metric of every run of the project (one point per drift check):

- the share of drifted columns, against the test's limit;
- the embedding drift score (Evidently ``EmbeddingsDrift``);
- the prediction distribution: mean predicted probability of abnormal and the share called
  abnormal;
- the number of drifted columns in the last check.

Runs carry tags (``site:<site>``, ``model:<tag>``, ``verdict:<status>``) and metadata (site,
model tag, verdict, window, scope), shown with each report and usable as panel filters.
"""

from __future__ import annotations

from typing import Any

from cxr_triage.config import MonitorParams
from cxr_triage.monitoring.evidently_env import quiet
from cxr_triage.monitoring.frames import PREDICTION_COLUMN
from cxr_triage.vocabulary import ABNORMAL

__all__ = ["add_panels", "panel_titles"]

_DRIFTED = "evidently:metric_v2:DriftedColumnsCount"


def panel_titles(site: str | None, monitor: MonitorParams) -> list[str]:
    """The titles of the panels :func:`add_panels` creates, in order."""
    return [
        f"Drift monitoring: {site or 'all sites'}",
        f"Share of drifted columns (drift at >= {monitor.drift_share:g})",
        "Embedding drift score",
        "Prediction distribution",
        "Drifted columns in the last check",
    ]


def add_panels(project: Any, site: str | None, monitor: MonitorParams) -> None:
    """Give a workspace project its panels (once: a project that has panels is left alone)."""
    with quiet():
        from evidently.sdk.models import PanelMetric
        from evidently.sdk.panels import counter_panel, line_plot_panel, text_panel

    if project.dashboard.model().panels:
        return
    title, share, embedding, prediction, count = panel_titles(site, monitor)
    column_share = {"value_type": "share", "drift_share": str(monitor.drift_share)}
    panels = [
        text_panel(
            title=title,
            description="One point per drift check (cxr-triage monitor, the daily flow); open "
            "a run under Reports for its evidence. Verdict: drift when a test fails.",
        ),
        line_plot_panel(
            title=share,
            values=[PanelMetric(legend="share", metric=_DRIFTED, metric_labels=column_share)],
            size="half",
        ),
        line_plot_panel(
            title=embedding,
            description=f"Evidently EmbeddingsDrift ({monitor.embedding_method}); the test "
            "fails above its threshold, calibrated on the reference",
            values=[PanelMetric(legend="score", metric="EmbeddingsDrift")],
            size="half",
        ),
        line_plot_panel(
            title=prediction,
            description=f"mean {PREDICTION_COLUMN} and the share of studies called abnormal",
            values=[
                PanelMetric(
                    legend=f"mean {PREDICTION_COLUMN}",
                    metric="MeanValue",
                    metric_labels={"column": PREDICTION_COLUMN},
                ),
                PanelMetric(
                    legend="share called abnormal",
                    metric="CategoryCount",
                    metric_labels={
                        "column": "label",
                        "categories": str([ABNORMAL]),  # how Evidently labels the point
                        "value_type": "share",
                    },
                ),
            ],
            size="half",
        ),
        counter_panel(
            title=count,
            values=[
                PanelMetric(
                    legend="columns",
                    metric=_DRIFTED,
                    metric_labels={**column_share, "value_type": "count"},
                )
            ],
            aggregation="last",
            size="half",
        ),
    ]
    for panel in panels:
        project.dashboard.add_panel(panel)
