"""The Evidently reports and pass/fail tests of a drift check, and the verdict they give.

- **Column drift**: per-column drift of the image statistics, acquisition and metadata columns,
  the embedding norm and the prediction (``prob_abnormal``, ``label``), ``DataDriftPreset``
  plus ``DriftedColumnsCount`` carrying the tests.
- **Embedding drift**: ``EmbeddingsDrift`` on the embedding summary (``emb_0``...), on a random
  sample of at most ``monitor.embedding_max_rows`` rows per side (its t-SNE plot is the
  expensive part), so it is a second report; the two are merged into one snapshot, one HTML
  page and one workspace run.
- **Verdict**: three tests, found by their alias: :data:`COLUMN_SHARE_TEST` (share of drifted
  columns < ``monitor.drift_share``), :data:`PREDICTION_TEST` (``prob_abnormal`` did not drift;
  only when ``monitor.prediction_drift_fails``) and :data:`EMBEDDING_TEST` (the embedding score
  <= its calibrated threshold, :mod:`~cxr_triage.monitoring.calibration`). Any failed test
  means drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from threadpoolctl import threadpool_limits

from cxr_triage.config import MonitorParams
from cxr_triage.errors import ConfigError
from cxr_triage.inference.features import IMAGE_STAT_COLUMNS
from cxr_triage.monitoring.calibration import drift_method, embedding_threshold
from cxr_triage.monitoring.evidently_env import Timer, quiet
from cxr_triage.monitoring.frames import (
    NUMERIC_COLUMNS,
    PREDICTION_COLUMN,
    Comparison,
    abnormal_rate,
    compared_columns,
    sample,
    value_counts,
)
from cxr_triage.monitoring.summary import (
    DRIFT,
    METHOD_LABEL,
    NO_DRIFT,
    EmbeddingDrift,
    PredictionDrift,
    TestOutcome,
    Verdict,
)
from cxr_triage.vocabulary import ABNORMAL

__all__ = [
    "COLUMN_SHARE_TEST",
    "EMBEDDING_NAME",
    "EMBEDDING_TEST",
    "PREDICTION_TEST",
    "Evaluation",
    "check_methods",
    "evaluate",
]

EMBEDDING_NAME = "embedding"
# Test aliases: how the verdict finds its tests among the snapshot's.
COLUMN_SHARE_TEST = "column drift share"
PREDICTION_TEST = "prediction drift"
EMBEDDING_TEST = "embedding drift"
_KS_MAX_REFERENCE_ROWS = 1000  # Evidently's own switch from K-S to Wasserstein
# Default K-S p-value threshold of the prediction test: one false alarm in 100 checks.
PREDICTION_KS_P = 0.01


def prediction_drift_share(monitor: MonitorParams) -> float:
    """``drift_share`` of the one-column prediction count: any value in (0, 1] means the same
    for one column; one other than ``monitor.drift_share`` keeps the two counts apart in the
    workspace's dashboards (they filter on it)."""
    return 1.0 if monitor.drift_share != 1.0 else 0.5


@dataclass(frozen=True)
class Evaluation:
    """The merged Evidently snapshot, the verdict it gives, and the seconds per step."""

    snapshot: Any
    verdict: Verdict
    timings: dict[str, float]


@dataclass
class _ColumnRun:
    snapshot: Any
    table: Any  # Evidently's legacy DataDriftTable result: per-column method, score, threshold
    columns: list[str]
    ignored: dict[str, str]
    reference: pd.DataFrame  # the sampled rows
    current: pd.DataFrame


@dataclass
class _EmbeddingRun:
    snapshot: Any
    calibration: dict[str, Any]
    n_rows: tuple[int, int]


def evaluate(
    comparison: Comparison,
    monitor: MonitorParams,
    *,
    seed: int,
    calibration_dir: Path,
    reference_key: str,
) -> Evaluation:
    """Run both reports on ``comparison``; return the merged snapshot and the verdict.

    Args:
        comparison: the reference and current rows (see ``frames.prepare_comparison``).
        monitor: ``params.monitor``.
        seed: seed of the row samples and the calibration splits.
        calibration_dir: the embedding threshold cache folder.
        reference_key: hash of the package's reference file.

    Raises:
        ConfigError: a ``monitor`` stat test name is unknown.
    """
    timings: dict[str, float] = {}
    check_methods(monitor)
    columns = _column_drift(comparison, monitor, seed, timings)
    embedding = _embedding_drift(
        comparison, monitor, seed, calibration_dir, reference_key, timings
    )
    with Timer(timings, "merge"):
        snapshot = _merge_snapshots(columns.snapshot, embedding.snapshot, monitor)
    return Evaluation(snapshot, _verdict(snapshot, columns, embedding, monitor), timings)


def check_methods(monitor: MonitorParams) -> None:
    """Refuse stat test names Evidently does not know (before any report runs).

    Raises:
        ConfigError: ``monitor.num_method`` or ``monitor.cat_method`` is unknown.
    """
    with quiet():
        from evidently.legacy.calculations.stattests.registry import get_registered_stattest
        from evidently.legacy.core import ColumnType

    for name, kind, column_type in (
        (monitor.num_method, "num", ColumnType.Numerical),
        (monitor.cat_method, "cat", ColumnType.Categorical),
    ):
        if name is None:
            continue
        try:
            get_registered_stattest(name, column_type)
        except (ValueError, KeyError) as exc:  # Evidently's StatTest*Error are ValueErrors
            raise ConfigError(
                f"monitor.{kind}_method: {name!r} is not an Evidently stat test for "
                f"{column_type.value} columns ({exc}); use e.g. ks, wasserstein, psi, "
                "jensenshannon, chisquare, or null"
            ) from exc


def _stat_tests(monitor: MonitorParams, n_reference: int) -> dict[str, Any]:
    # Evidently switches numeric columns with <= 5 distinct values to chi-square, which
    # explodes on one value the reference never had (img_p05 of a same-site batch): numbers
    # always get a numeric test.
    num_method = monitor.num_method or (
        "ks" if n_reference <= _KS_MAX_REFERENCE_ROWS else "wasserstein"
    )
    methods: dict[str, Any] = {
        "num_method": num_method,
        "num_threshold": monitor.num_threshold,
        "cat_method": monitor.cat_method,
        "cat_threshold": monitor.cat_threshold,
    }
    threshold = prediction_threshold(monitor, num_method)
    if threshold is not None:
        methods["per_column_threshold"] = {PREDICTION_COLUMN: threshold}
    return methods


def prediction_threshold(monitor: MonitorParams, num_method: str) -> float | None:
    """The prediction's own stat-test threshold: ``monitor.prediction_threshold``, or, when
    null and the test is K-S, p < :data:`PREDICTION_KS_P` (None: the columns' threshold).

    The column share test tolerates a column or two drifting by chance; the prediction alone
    decides the verdict (``prediction_drift_fails``), so at K-S p < 0.05 a daily check of an
    unchanged site would wake a maintainer about every 20 days for nothing.
    """
    if monitor.prediction_threshold is not None:
        return monitor.prediction_threshold
    return PREDICTION_KS_P if num_method == "ks" else monitor.num_threshold


def _column_metrics(
    columns: list[str], numeric: list[str], monitor: MonitorParams, methods: dict[str, Any]
) -> list[Any]:
    """DriftedColumnsCount with the share test (and the prediction test), DataDriftPreset."""
    with quiet():
        from evidently.metrics import CategoryCount, DriftedColumnsCount, MeanValue
        from evidently.presets import DataDriftPreset
        from evidently.tests.numerical_tests import EqualMetricTest, LessThanMetricTest

    metrics: list[Any] = [
        DriftedColumnsCount(
            columns=columns,
            drift_share=monitor.drift_share,
            share_tests=[
                LessThanMetricTest(threshold=monitor.drift_share, alias=COLUMN_SHARE_TEST)
            ],
            **methods,
        )
    ]
    if monitor.prediction_drift_fails and PREDICTION_COLUMN in numeric:
        metrics.append(
            DriftedColumnsCount(
                columns=[PREDICTION_COLUMN],
                drift_share=prediction_drift_share(monitor),
                tests=[EqualMetricTest(expected=0, alias=PREDICTION_TEST)],
                **methods,
            )
        )
    metrics.append(DataDriftPreset(columns=columns, drift_share=monitor.drift_share, **methods))
    # The prediction distribution, for the dashboards (no test: drift decides).
    if PREDICTION_COLUMN in numeric:
        metrics.append(MeanValue(column=PREDICTION_COLUMN))
    if "label" in columns:
        metrics.append(CategoryCount(column="label", category=ABNORMAL))
    return metrics


def _column_drift(
    comparison: Comparison, monitor: MonitorParams, seed: int, timings: dict[str, float]
) -> _ColumnRun:
    """The column report, and Evidently's per-column table (method, score, threshold)."""
    with quiet():
        from evidently import DataDefinition, Dataset, Report
        from evidently.legacy.metrics import DataDriftTable

    numeric, categorical, ignored = compared_columns(
        comparison.reference, comparison.current, comparison.scope
    )
    columns = [*numeric, *categorical]
    ref_rows = sample(comparison.reference, monitor.max_rows, seed)
    cur_rows = sample(comparison.current, monitor.max_rows, seed + 1)
    methods = _stat_tests(monitor, len(ref_rows))
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    with Timer(timings, "column_drift"), quiet():
        snapshot = Report(
            _column_metrics(columns, numeric, monitor, methods), include_tests=False
        ).run(
            current_data=Dataset.from_pandas(cur_rows[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(ref_rows[columns], data_definition=definition),
        )
        table, _ = snapshot.context.get_legacy_metric(
            DataDriftTable(
                columns=columns,
                num_stattest=methods["num_method"],
                num_stattest_threshold=monitor.num_threshold,
                cat_stattest=monitor.cat_method,
                cat_stattest_threshold=monitor.cat_threshold,
                per_column_stattest_threshold=methods.get("per_column_threshold"),
            ),
            None,
            None,
        )
    return _ColumnRun(snapshot, table, columns, ignored, ref_rows, cur_rows)


def _embedding_drift(
    comparison: Comparison,
    monitor: MonitorParams,
    seed: int,
    calibration_dir: Path,
    reference_key: str,
    timings: dict[str, float],
) -> _EmbeddingRun:
    """The embedding report on row samples, with its calibrated threshold as the test."""
    with quiet():
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import EmbeddingsDrift
        from evidently.tests.numerical_tests import LessOrEqualMetricTest

    embedding = comparison.embedding
    emb_ref = sample(comparison.reference[embedding], monitor.embedding_max_rows, seed + 2)
    emb_cur = sample(comparison.current[embedding], monitor.embedding_max_rows, seed + 3)
    with Timer(timings, "embedding_calibration"):
        calibration = embedding_threshold(
            emb_ref,
            len(emb_cur),
            monitor,
            seed=seed,
            cache_dir=calibration_dir,
            reference_key=reference_key,
            scope=comparison.scope,
        )
    threshold = calibration["threshold"]
    definition = DataDefinition(
        numerical_columns=embedding, embeddings={EMBEDDING_NAME: embedding}
    )
    # One OpenMP thread: the t-SNE plot of EmbeddingsDrift runs 1000 short parallel
    # iterations, which spin-wait ~4x slower on 2 threads as soon as the cores are shared.
    with Timer(timings, "embedding_drift"), quiet(), threadpool_limits(1, user_api="openmp"):
        snapshot = Report(
            [
                EmbeddingsDrift(
                    embeddings_name=EMBEDDING_NAME,
                    drift_method=drift_method(monitor.embedding_method, threshold),
                    tests=[LessOrEqualMetricTest(threshold=threshold, alias=EMBEDDING_TEST)],
                )
            ],
            include_tests=False,
        ).run(
            current_data=Dataset.from_pandas(emb_cur, data_definition=definition),
            reference_data=Dataset.from_pandas(emb_ref, data_definition=definition),
        )
    return _EmbeddingRun(snapshot, calibration, (len(emb_ref), len(emb_cur)))


def _merge_snapshots(first: Any, second: Any, monitor: MonitorParams) -> Any:
    """One snapshot holding both reports' metrics, widgets and tests (one HTML, one run)."""
    from evidently.core.report import Snapshot, metric_tests_stats, metric_tests_widget

    merged = first.dump_dict()
    extra = second.dump_dict()
    merged["metric_results"] = {**merged["metric_results"], **extra["metric_results"]}
    merged["top_level_metrics"] = [*merged["top_level_metrics"], *extra["top_level_metrics"]]
    merged["widgets"] = [*merged["widgets"], *extra["widgets"]]
    merged["tests_widgets"] = []
    _name_for_what_they_measure(merged, monitor)
    snapshot = Snapshot.load_dict(merged)
    tests = snapshot.tests_results
    if tests:
        widgets = [metric_tests_stats(tests), metric_tests_widget(tests)]
        merged["tests_widgets"] = [w.dict() for w in widgets]
        snapshot = Snapshot.load_dict(merged)
    return snapshot


def _test_alias(result: dict[str, Any]) -> str | None:
    params = result["metric_value_location"]["metric"]["params"]
    tests = [*(params.get("tests") or []), *(params.get("share_tests") or [])]
    return next((t.get("alias") for t in tests if t.get("alias")), None)


@dataclass(frozen=True)
class _Naming:
    """What a test's metric tiles and the test are called (tile suffix -> title, value)."""

    tiles: dict[str, tuple[str, str]]
    test_name: str
    test_description: str | None = None
    drop: tuple[str, ...] = ()  # tile suffixes to leave out


def _column_naming(result: dict[str, Any], monitor: MonitorParams) -> _Naming:
    count, share = int(result["count"]["value"]), float(result["share"]["value"])
    n = len(result["metric_value_location"]["metric"]["params"].get("columns") or [])
    limit = f"{monitor.drift_share:g}"
    return _Naming(
        tiles={
            ": count": ("Drifted columns", f"{count} of {n}"),
            ": share": (f"Share of drifted columns (drift at >= {limit})", f"{share:.2f}"),
        },
        test_name=f"Share of drifted columns < {limit}",
    )


def _prediction_naming(result: dict[str, Any], monitor: MonitorParams) -> _Naming:
    count = int(result["count"]["value"])
    verdict = "drifted" if count else "stable"
    return _Naming(
        tiles={": count": (f"Prediction ({PREDICTION_COLUMN}) distribution", verdict)},
        test_name=f"Prediction ({PREDICTION_COLUMN}) did not drift",
        test_description=f"{PREDICTION_TEST}: {PREDICTION_COLUMN} {verdict} (drifted "
        f"columns {count}, expected 0)",
        drop=(": share",),  # the share of one column says nothing more
    )


def _embedding_naming(result: dict[str, Any], monitor: MonitorParams) -> _Naming:
    (test,) = result["metric_value_location"]["metric"]["params"]["tests"]
    label = METHOD_LABEL.get(monitor.embedding_method, monitor.embedding_method)
    return _Naming(tiles={}, test_name=f"Embedding drift ({label}) <= {test['threshold']:.3g}")


_NAMING = {
    COLUMN_SHARE_TEST: _column_naming,
    PREDICTION_TEST: _prediction_naming,
    EMBEDDING_TEST: _embedding_naming,
}


def _name_for_what_they_measure(merged: dict[str, Any], monitor: MonitorParams) -> None:
    """Tiles and tests titled for what they measure, counts as integers (in place).

    Evidently titles both drifted-column counts "Count of Drifted Columns", so the prediction
    test's tiles read like the column test's, and it prints counts as floats ("13.0").
    """
    dropped: set[str] = set()
    for metric_id, result in merged["metric_results"].items():
        naming_of = _NAMING.get(_test_alias(result) or "")
        if naming_of is None:
            continue
        naming = naming_of(result, monitor)
        for widget in merged["widgets"]:
            if metric_id not in (widget.get("linked_metrics") or []):
                continue
            suffix = next((s for s in (": count", ": share") if widget["title"].endswith(s)), "")
            if suffix in naming.drop:
                dropped.add(widget["id"])
            elif suffix in naming.tiles:
                widget["title"], value = naming.tiles[suffix]
                widget["params"]["counters"] = [{"value": value, "label": ""}]
        for test in result["tests"]:
            test["name"] = naming.test_name
            test["description"] = naming.test_description or test["description"]
    merged["widgets"] = [w for w in merged["widgets"] if w["id"] not in dropped]


def _verdict(
    snapshot: Any, columns: _ColumnRun, embedding: _EmbeddingRun, monitor: MonitorParams
) -> Verdict:
    """The verdict and its evidence, read from the snapshot's tests and metrics."""
    data = snapshot.dict()
    tests = [_test_outcome(t) for t in data["tests"]]
    by_alias = {t.alias: t for t in tests}
    per_column = {c: _column_entry(c, columns) for c in columns.columns}
    drifted = [c for c in columns.columns if per_column[c]["drift"]]
    embedding_score = next(
        (
            float(m["value"])
            for m in data["metrics"]
            if m["metric_name"].startswith("EmbeddingsDrift")
        ),
        None,
    )
    pred = per_column.get(PREDICTION_COLUMN, {})
    return Verdict(
        status=DRIFT if any(t.failed for t in tests) else NO_DRIFT,
        n_columns=len(columns.columns),
        drifted_columns=drifted,
        drift_share=len(drifted) / len(columns.columns) if columns.columns else 0.0,
        drift_share_threshold=monitor.drift_share,
        ignored_columns=columns.ignored,
        image_statistics_drifted=[c for c in IMAGE_STAT_COLUMNS if c in drifted],
        prediction_drift=PredictionDrift(
            method=pred.get("method"),
            score=pred.get("score"),
            threshold=pred.get("threshold"),
            drift=bool(pred.get("drift", False)),
            decides_verdict=PREDICTION_TEST in by_alias,
            reference_abnormal_rate=abnormal_rate(columns.reference),
            current_abnormal_rate=abnormal_rate(columns.current),
        ),
        embedding_drift=EmbeddingDrift(
            method=monitor.embedding_method,
            score=embedding_score,
            threshold=embedding.calibration["threshold"],
            drift=EMBEDDING_TEST in by_alias and by_alias[EMBEDDING_TEST].failed,
            n_reference_rows=embedding.n_rows[0],
            n_current_rows=embedding.n_rows[1],
            calibration=embedding.calibration,
        ),
        columns=per_column,
        tests=tests,
    )


def _test_outcome(test: dict[str, Any]) -> TestOutcome:
    status = test["status"]
    return TestOutcome(
        alias=(test.get("test_config") or {}).get("alias"),
        name=test["name"],
        description=test["description"],
        status=str(getattr(status, "value", status)),
    )


def _column_entry(column: str, run: _ColumnRun) -> dict[str, Any]:
    """Method, score, threshold and verdict of one column, with both sides' typical values."""
    drift = run.table.drift_by_columns[column]
    entry: dict[str, Any] = {
        "method": drift.stattest_name,
        "score": float(drift.drift_score),
        "threshold": float(drift.stattest_threshold),
        "drift": bool(drift.drift_detected),
    }
    if column in NUMERIC_COLUMNS:
        entry["reference_median"] = float(run.reference[column].median())
        entry["current_median"] = float(run.current[column].median())
    else:
        entry["reference_top"] = value_counts(run.reference, column, top=3)
        entry["current_top"] = value_counts(run.current, column, top=3)
    return entry
