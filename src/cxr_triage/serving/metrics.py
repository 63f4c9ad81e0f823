"""The service's own Prometheus metrics, beside BentoML's on ``/metrics``.

========================================  =========  ============================================
metric                                    type       labels
========================================  =========  ============================================
``cxr_triage_model_info``                 gauge (1)  ``model_tag``: the model this worker serves
``cxr_triage_predictions_total``          counter    ``model_tag``, ``label`` (normal/abnormal)
``cxr_triage_prob_abnormal``              histogram  ``model_tag``; buckets 0.05 .. 1 by 0.05
``cxr_triage_refusals_total``             counter    ``reason``, ``status`` (every refusal sent,
                                                     and each refused file of a batch)
========================================  =========  ============================================

BentoML 1.4 serves ``/metrics`` from prometheus_client in multiprocess mode (its workers set
``PROMETHEUS_MULTIPROC_DIR`` when they start, after the service module is imported; the
``bentoml.metrics`` wrapper is deprecated in favour of prometheus_client itself). So
prometheus_client is imported, and the metrics created, on first use in a worker, never at
import; every worker's counts are summed on ``/metrics``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ServiceMetrics",
    "record_model",
    "record_prediction",
    "record_refusal",
    "service_metrics",
]

_PROB_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
_lock = threading.Lock()
_metrics: ServiceMetrics | None = None


@dataclass(frozen=True)
class ServiceMetrics:
    """The metric objects (prometheus_client), created once per process."""

    model_info: Any
    predictions: Any
    prob_abnormal: Any
    refusals: Any


def service_metrics() -> ServiceMetrics:
    """This process's metrics (created on the first call)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _create()
        return _metrics


def _create() -> ServiceMetrics:
    from prometheus_client import Counter, Gauge, Histogram

    return ServiceMetrics(
        model_info=Gauge(
            "cxr_triage_model_info",
            "The model this worker serves (value 1)",
            ["model_tag"],
            multiprocess_mode="max",
        ),
        predictions=Counter(
            "cxr_triage_predictions", "Predictions answered, by label", ["model_tag", "label"]
        ),
        prob_abnormal=Histogram(
            "cxr_triage_prob_abnormal",
            "Calibrated probability of abnormal of answered predictions",
            ["model_tag"],
            buckets=_PROB_BUCKETS,
        ),
        refusals=Counter(
            "cxr_triage_refusals",
            "Refusals sent (and refused files of a batch), by reason",
            ["reason", "status"],
        ),
    )


def record_model(model_tag: str) -> None:
    """Mark ``model_tag`` as served by this worker."""
    service_metrics().model_info.labels(model_tag=model_tag).set(1)


def record_prediction(model_tag: str, label: str, prob_abnormal: float) -> None:
    """Count one answered prediction."""
    metrics = service_metrics()
    metrics.predictions.labels(model_tag=model_tag, label=label).inc()
    metrics.prob_abnormal.labels(model_tag=model_tag).observe(prob_abnormal)


def record_refusal(reason: str, status: int) -> None:
    """Count one refusal."""
    service_metrics().refusals.labels(reason=reason, status=str(status)).inc()
