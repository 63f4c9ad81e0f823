"""Sections of operations: the package stage, monitoring, the promotion gate and schedules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cxr_triage.errors import ConfigError

__all__ = ["MonitorParams", "PackageParams", "PromoteParams", "ScheduleParams"]


@dataclass(frozen=True)
class PackageParams:
    """The ``package`` stage: the model package, the BentoML model store and the Bento."""

    summary_components: int = 8  # principal components of the embedding logged per prediction
    register: bool = True  # save the package into the BentoML model store
    build_bento: bool = True  # build a Bento from bentofile.yaml (offline)


@dataclass(frozen=True)
class MonitorParams:
    """Drift monitoring (Evidently): how current data is compared with the reference.

    Attributes:
        min_current_rows: below this many current rows the verdict is "insufficient data".
        min_reference_rows: a site's reference rows are used alone only when there are at least
            this many (else the whole reference); a smaller whole reference is "insufficient
            data".
        max_rows: at most this many rows per side for the column drift tests (random sample).
        drift_share: the column test fails when this share of the columns or more drifted.
        num_method, cat_method: Evidently stat test names for numeric / categorical columns;
            null: K-S (reference <= 1000 rows) or normed Wasserstein for numbers, Evidently's
            default for categories.
        num_threshold, cat_threshold: their thresholds; null: the method's default.
        prediction_drift_fails: a drifted ``prob_abnormal`` distribution alone fails the run.
        prediction_threshold: the stat-test threshold of ``prob_abnormal``; null: K-S p < 0.01
            (one false alarm in 100 checks of an unchanged site), else ``num_threshold``.
        embedding_method: Evidently ``EmbeddingsDrift`` method: mmd | model | distance | ratio.
        embedding_max_rows: rows per side for the embedding test (its t-SNE plot costs ~4 s at
            500 + 500 rows, ~11 s at 1000 + 1000 on 2 cores).
        calibration_repeats: reference-vs-reference random splits that calibrate the embedding
            threshold (cached per package, site and current size).
        calibration_quantile: quantile of the split scores ...
        calibration_margin: ... times this margin (above the method's no-drift baseline) is the
            embedding threshold.
        retrain_on_drift: the monitoring flow starts retraining when drift is detected.
        feedback_min_reads: realised sensitivity and specificity are graded (and may alert)
            only with at least this many fed-back abnormal reads and as many normal ones in
            the window; fewer: "insufficient feedback".
        feedback_n_boot: bootstrap resamples of their 95% CIs.
        report_retention_days: each drift check deletes run folders (and their workspace runs)
            older than this; null keeps them all.
        log_retention_days: each drift check of the prediction log deletes its predictions
            (and reads received) older than this; null keeps them all (an audit log: back it
            up first, ``cxr-triage backup``).
    """

    min_current_rows: int = 30
    min_reference_rows: int = 50
    max_rows: int = 50_000
    drift_share: float = 0.3
    num_method: str | None = None
    num_threshold: float | None = None
    cat_method: str | None = None
    cat_threshold: float | None = None
    prediction_drift_fails: bool = True
    prediction_threshold: float | None = None
    embedding_method: Literal["mmd", "model", "distance", "ratio"] = "mmd"
    embedding_max_rows: int = 500
    calibration_repeats: int = 50
    calibration_quantile: float = 0.95
    calibration_margin: float = 1.5
    retrain_on_drift: bool = False
    feedback_min_reads: int = 20
    feedback_n_boot: int = 1000
    report_retention_days: float | None = None
    log_retention_days: float | None = None

    def __post_init__(self) -> None:
        for key in ("report_retention_days", "log_retention_days"):
            days = getattr(self, key)
            if days is not None and not days >= 1:
                raise ConfigError(f"monitor.{key} must be >= 1 day or null (keep), got {days}")
        if self.feedback_min_reads < 1 or self.feedback_n_boot < 100:
            raise ConfigError(
                "monitor.feedback_min_reads must be >= 1 and monitor.feedback_n_boot >= 100 "
                "(a 95% CI needs a few hundred resamples)"
            )
        if self.min_current_rows < 2 or self.min_reference_rows < 4:
            raise ConfigError(
                "monitor.min_current_rows must be >= 2 and monitor.min_reference_rows >= 4 "
                "(drift tests need a sample on each side)"
            )
        if self.max_rows < self.min_current_rows or self.embedding_max_rows < 10:
            raise ConfigError(
                "monitor.max_rows must be >= monitor.min_current_rows and "
                "monitor.embedding_max_rows >= 10"
            )
        if not 0 < self.drift_share <= 1:
            raise ConfigError(f"monitor.drift_share must be in (0, 1], got {self.drift_share}")
        if self.calibration_repeats < 5:
            raise ConfigError("monitor.calibration_repeats must be >= 5 (20 or more is better)")
        if not 0.5 <= self.calibration_quantile < 1:
            raise ConfigError(
                "monitor.calibration_quantile must be in [0.5, 1), "
                f"got {self.calibration_quantile}"
            )
        if not self.calibration_margin >= 1:
            raise ConfigError(
                f"monitor.calibration_margin must be >= 1, got {self.calibration_margin}"
            )


@dataclass(frozen=True)
class PromoteParams:
    """The retraining flow's promotion gate (``cxr_triage.orchestration.gate``).

    Attributes:
        frozen_test_dir: a labelled image folder that never enters training; both the serving
            and the candidate package score it.
        frozen_test_source: its layout, as for ``ingest.source``.
        frozen_test_per_site: images per ``synth.sites`` site of the synthetic frozen set.
        frozen_test_seed: seed of the synthetic frozen set; must differ from ``seed``.
        max_auroc_drop: non-inferiority margin: promote only if the lower CI bound of
            (candidate AUROC - serving AUROC) is >= -max_auroc_drop.
        min_sensitivity: sensitivity at the candidate's own threshold on the frozen set must
            reach this.
        n_boot: patient-bootstrap resamples of the paired AUROC difference.
        alpha: 1 minus the CI coverage (0.05: 95% interval).
        min_images: a frozen set with fewer usable images is refused.
    """

    frozen_test_dir: str = "data/frozen_test"
    frozen_test_source: Literal["synthetic", "chestxray14", "folder", "dicom"] = "synthetic"
    frozen_test_per_site: int = 80
    frozen_test_seed: int = 9001
    max_auroc_drop: float = 0.02
    min_sensitivity: float = 0.9
    n_boot: int = 1000
    alpha: float = 0.05
    min_images: int = 30

    def __post_init__(self) -> None:
        if not 0 <= self.max_auroc_drop < 1:
            raise ConfigError(
                f"promote.max_auroc_drop must be in [0, 1), got {self.max_auroc_drop}"
            )
        if not 0 <= self.min_sensitivity <= 1:
            raise ConfigError(
                f"promote.min_sensitivity must be in [0, 1], got {self.min_sensitivity}"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError(f"promote.alpha must be in (0, 1), got {self.alpha}; 0.05 is usual")
        if self.n_boot < 1 or self.min_images < 1 or self.frozen_test_per_site < 1:
            raise ConfigError(
                "promote.n_boot, promote.min_images and promote.frozen_test_per_site must be >= 1"
            )


@dataclass(frozen=True)
class ScheduleParams:
    """Prefect deployments (``python -m flows.deploy``): when monitoring and retraining run.

    Attributes:
        timezone: IANA time zone of both crons (Prefect reads a bare cron as UTC).
        monitoring_cron: when the drift check runs (5-field cron).
        retraining_cron: when retraining runs.
        monitoring_window_hours: the drift check reads this many past hours of the prediction log.
        work_pool: the process work pool that runs the deployments.
    """

    timezone: str = "UTC"
    monitoring_cron: str = "0 6 * * *"
    retraining_cron: str = "0 3 * * 1"
    monitoring_window_hours: float = 24.0
    work_pool: str = "cxr-local"

    def __post_init__(self) -> None:
        for key in ("monitoring_cron", "retraining_cron"):
            if len(str(getattr(self, key)).split()) != 5:
                raise ConfigError(
                    f"schedule.{key}: expected a 5-field cron (minute hour day month weekday), "
                    f"got {getattr(self, key)!r}"
                )
        if not self.monitoring_window_hours > 0:
            raise ConfigError("schedule.monitoring_window_hours must be > 0")
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"schedule.timezone: unknown time zone {self.timezone!r}; use an IANA name such "
                "as UTC or Europe/Berlin"
            ) from exc
