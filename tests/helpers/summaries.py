"""A drift check's summary.json as the monitoring flow hands it to the alerts (for tests)."""

from __future__ import annotations

from typing import Any


def drift_summary(**overrides: Any) -> dict[str, Any]:
    """A drift verdict at ``new_hospital`` with unrounded figures, as check_drift writes them."""
    summary: dict[str, Any] = {
        "status": "drift",
        "drift": True,
        "site": "new_hospital",
        "model_tag": "cxr-triage:4a46c272ed15a8b8",
        "scope": "all",
        "n_reference": 326,
        "n_current": 60,
        "n_columns": 21,
        "drifted_columns": [f"column_{i}" for i in range(19)],
        "drift_share": 19 / 21,  # 0.9047619047619048
        "drift_share_threshold": 0.3,
        "failed_tests": ["column drift share", "prediction drift", "embedding drift"],
        "prediction_drift": {"method": "K-S p_value", "score": 5.6314e-37, "drift": True},
        "embedding_drift": {
            "method": "mmd",
            "score": 0.62143217,
            "threshold": 0.02148812,
            "drift": True,
        },
        "source": {
            "kind": "images",
            "description": "images in /data/incoming/images, 2 unreadable",
            "folder": "/data/incoming/images",
            "n_unreadable": 2,
        },
        "reports": {
            "html": "/var/lib/cxr-triage/monitor/runs/20261123T132850Z-new_hospital/report.html",
            "json": "/var/lib/cxr-triage/monitor/runs/20261123T132850Z-new_hospital/summary.json",
            "project_id": "0197a6f3-0d6e-7c2a-9b1e-5c7e0a4b2d11",
            "run_id": "0197a6f3-1a2b-7c3d-8e4f-5a6b7c8d9e0f",
        },
    }
    summary.update(overrides)
    return summary
