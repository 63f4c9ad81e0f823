"""Drift monitoring: Evidently reports comparing current monitoring features with the reference.

:func:`check_drift` is the one drift check (``cxr-triage monitor`` and the monitoring flow call
it and format its :class:`DriftSummary`). Modules, by concern:

- ``current``: where the current rows come from (:class:`LogWindow`, :class:`ImageFolder`);
- ``frames``: the reference, cleaning, the monitored site and the reference scope;
- ``report``: the Evidently reports, their pass/fail tests and the verdict;
- ``calibration``: the embedding-drift threshold, calibrated on the reference;
- ``outputs``: the run folder and the Evidently workspace;
- ``summary``: :class:`DriftSummary`, the typed outcome (``summary.json``);
- ``check``: :func:`check_drift`, which runs those steps in order.

Evidently is imported inside functions only: importing this package does nothing.
"""

from cxr_triage.monitoring.check import check_drift
from cxr_triage.monitoring.current import (
    CurrentData,
    ImageFolder,
    LogWindow,
    current_from_images,
    current_from_log,
)
from cxr_triage.monitoring.frames import load_reference
from cxr_triage.monitoring.summary import DriftSummary

__all__ = [
    "CurrentData",
    "DriftSummary",
    "ImageFolder",
    "LogWindow",
    "check_drift",
    "current_from_images",
    "current_from_log",
    "load_reference",
]
