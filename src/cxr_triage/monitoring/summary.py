"""The outcome of one drift check, typed: :class:`DriftSummary` and its parts.

``summary.json`` is :meth:`DriftSummary.to_json`; the CLI prints it (``--json``) or
:meth:`DriftSummary.one_line`, and the monitoring flow returns it and builds its alert from it.
Every run has the same keys, whatever its status (values the run could not compute are null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.monitoring.frames import PREDICTION_COLUMN
from cxr_triage.monitoring.performance import NO_FEEDBACK, RealisedPerformance

__all__ = [
    "DRIFT",
    "INSUFFICIENT_DATA",
    "NO_DRIFT",
    "DriftSummary",
    "EmbeddingDrift",
    "PredictionDrift",
    "Reports",
    "TestOutcome",
    "Verdict",
    "json_safe",
]

DRIFT, NO_DRIFT, INSUFFICIENT_DATA = "drift", "no_drift", "insufficient_data"
_FAILED = ("FAIL", "ERROR")
METHOD_LABEL = {"mmd": "MMD", "model": "model ROC AUC", "distance": "distance", "ratio": "ratio"}


@dataclass(frozen=True)
class TestOutcome:
    """One Evidently pass/fail test: its alias (how the verdict finds it) and status."""

    __test__ = False  # not a pytest test class

    alias: str | None
    name: str
    description: str
    status: str  # SUCCESS, FAIL, ERROR, WARNING...

    @property
    def failed(self) -> bool:
        return self.status in _FAILED


@dataclass(frozen=True)
class PredictionDrift:
    """Drift of the predicted probability (``prob_abnormal``) and the abnormal rates."""

    column: str = PREDICTION_COLUMN
    method: str | None = None
    score: float | None = None
    threshold: float | None = None
    drift: bool = False
    decides_verdict: bool = False  # monitor.prediction_drift_fails
    reference_abnormal_rate: float | None = None
    current_abnormal_rate: float | None = None


@dataclass(frozen=True)
class EmbeddingDrift:
    """Evidently ``EmbeddingsDrift`` score and its calibrated threshold (see calibration.py)."""

    method: str
    score: float | None = None
    threshold: float | None = None
    drift: bool = False
    n_reference_rows: int = 0
    n_current_rows: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """What the Evidently tests decided, and their evidence.

    Attributes:
        status: ``drift``, ``no_drift`` or ``insufficient_data`` (no Evidently run).
        reason: why there is no verdict (``insufficient_data`` only).
        n_columns: columns compared per column (drift share denominator).
        drifted_columns: those that drifted.
        drift_share: ``len(drifted_columns) / n_columns``; None without a run.
        drift_share_threshold: ``monitor.drift_share``.
        ignored_columns: column -> why it was not compared.
        image_statistics_drifted: the drifted image statistic columns.
        prediction_drift: see :class:`PredictionDrift`.
        embedding_drift: see :class:`EmbeddingDrift`.
        columns: column -> method, score, threshold, drift, and medians (numbers) or the
            three most common values with their shares (categories) on each side.
        tests: every pass/fail test.
    """

    status: str
    drift_share_threshold: float
    prediction_drift: PredictionDrift
    embedding_drift: EmbeddingDrift
    reason: str | None = None
    n_columns: int = 0
    drifted_columns: list[str] = field(default_factory=list)
    drift_share: float | None = None
    ignored_columns: dict[str, str] = field(default_factory=dict)
    image_statistics_drifted: list[str] = field(default_factory=list)
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    tests: list[TestOutcome] = field(default_factory=list)

    @classmethod
    def insufficient(cls, reason: str, *, drift_share: float, embedding_method: str) -> Verdict:
        """No verdict: too few rows to decide (neither an all-clear nor an alert)."""
        return cls(
            status=INSUFFICIENT_DATA,
            reason=reason,
            drift_share_threshold=drift_share,
            prediction_drift=PredictionDrift(),
            embedding_drift=EmbeddingDrift(method=embedding_method),
        )

    @property
    def drift(self) -> bool:
        return self.status == DRIFT

    @property
    def failed_tests(self) -> list[str]:
        return [t.alias or t.name for t in self.tests if t.failed]


@dataclass(frozen=True)
class Reports:
    """Where a run's outputs are: its folder's files and its run in the Evidently workspace."""

    html: str
    json: str
    workspace: str | None = None
    project: str | None = None
    project_id: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class DriftSummary:
    """One drift check: what was compared with what, the verdict, and where the reports are.

    Attributes:
        created_at: UTC start of the run (ISO 8601, seconds).
        model_tag: the package whose reference was used.
        package_dir: its folder.
        package_chosen_by: how it was chosen (``package``, ``tag``, ``environment``,
            ``serving`` or ``latest``: :func:`cxr_triage.inference.registry.resolve_package`).
        site, scope, scope_reason: see :class:`~cxr_triage.monitoring.frames.Comparison`.
        n_reference: reference rows in scope.
        n_current: current rows compared.
        n_current_other_sites: current rows of other sites, left out.
        current_model_tags: model tag -> rows, of the current rows (prediction log).
        source: where the current rows came from (log window or folder, unreadable files).
        retrain_on_drift: ``monitor.retrain_on_drift``.
        verdict: the tests' decision and evidence.
        reports: the run's files and workspace run.
        timings_s: seconds per step of the Evidently run.
        performance: the window's predictions graded by fed-back reads (log windows only;
            None for folders and rows in hand).
        retention: what this check deleted as expired (``monitor.*_retention_days``): runs,
            workspace runs, predictions, reads.
    """

    created_at: str
    model_tag: str | None
    package_dir: str
    package_chosen_by: str
    site: str | None
    scope: str
    scope_reason: str
    n_reference: int
    n_current: int
    n_current_other_sites: int
    current_model_tags: dict[str, int]
    source: dict[str, Any]
    retrain_on_drift: bool
    verdict: Verdict
    reports: Reports
    timings_s: dict[str, float] = field(default_factory=dict)
    performance: RealisedPerformance | None = None
    retention: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``drift``, ``no_drift`` or ``insufficient_data``."""
        return self.verdict.status

    @property
    def drift(self) -> bool:
        """The verdict: True only for ``drift`` (False for "insufficient data")."""
        return self.verdict.drift

    @property
    def retrain_recommended(self) -> bool:
        return self.drift and self.retrain_on_drift

    @property
    def performance_alert(self) -> bool:
        """The realised sensitivity's CI lower bound is below the target."""
        return self.performance is not None and self.performance.alert

    @property
    def html_path(self) -> Path:
        return Path(self.reports.html)

    @property
    def json_path(self) -> Path:
        return Path(self.reports.json)

    def to_json(self) -> dict[str, Any]:
        """The summary as plain JSON data (``summary.json``): the verdict's keys at top level.

        NaN and infinities become null, numpy scalars Python numbers.
        """
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        verdict = data.pop("verdict")
        data.update({f.name: getattr(verdict, f.name) for f in fields(verdict)})
        data.update(
            drift=self.drift,
            retrain_recommended=self.retrain_recommended,
            failed_tests=verdict.failed_tests,
            performance_alert=self.performance_alert,
        )
        return json_safe(data)

    def one_line(self) -> str:
        """The verdict and its evidence on one line, for logs and the CLI."""
        v = self.verdict
        where = (
            f"{self.site or 'mixed/unknown sites'} vs {self.scope} reference "
            f"({self.n_reference} rows), {self.n_current} current rows"
        )
        graded = ""
        if self.performance is not None and self.performance.status != NO_FEEDBACK:
            graded = f"; {self.performance.one_line()}"
        if v.status == INSUFFICIENT_DATA:
            return f"INSUFFICIENT DATA: {v.reason}; {where}{graded}; report: {self.html_path}"
        head = "DRIFT" if self.drift else "NO DRIFT"
        return f"{head}: {', '.join(evidence(v))}; {where}{graded}; report: {self.html_path}"


def evidence(verdict: Verdict) -> list[str]:
    """The three tests' figures as short phrases (columns, prediction, embeddings)."""
    share = verdict.drift_share or 0.0
    pred, emb = verdict.prediction_drift, verdict.embedding_drift
    label = METHOD_LABEL.get(emb.method, emb.method)
    return [
        f"{len(verdict.drifted_columns)}/{verdict.n_columns} columns drifted (share {share:.2f} "
        f"{'>=' if share >= verdict.drift_share_threshold else '<'} "
        f"{verdict.drift_share_threshold:.2f})",
        f"prediction {'drifted' if pred.drift else 'stable'} ({pred.method} {fmt(pred.score)}, "
        f"threshold {fmt(pred.threshold)})",
        f"embeddings {'drifted' if emb.drift else 'stable'} ({label} {fmt(emb.score)} "
        f"{'>' if emb.drift else '<='} {fmt(emb.threshold)})",
    ]


def fmt(value: float | None) -> str:
    """A figure for people: 3 decimals, or 3 significant digits below 0.001."""
    if value is None:
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"


def json_safe(value: Any) -> Any:
    """Plain JSON values: dataclasses as dicts, numpy scalars as Python, NaN/inf as None."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
