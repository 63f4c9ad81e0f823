"""Drift reports with Evidently: current monitoring features against the package's reference.

The only module that imports Evidently (lazily: importing this module does nothing).

- **Reference**: the package's ``reference.parquet`` (monitoring features of the val and test
  images, scored by the package itself). When the current data comes from one site that the
  reference knows, with at least ``monitor.min_reference_rows`` rows, only that site's rows are
  used, so a batch from one training hospital is not flagged because the reference mixes
  hospitals; otherwise the whole reference. ``summary["scope"]`` says which, and why.
- **Current**: a window of the prediction log (:func:`current_from_log`) or a folder of images
  scored through the :class:`~cxr_triage.inference.predictor.Predictor`
  (:func:`current_from_images`).
- **Report**: per-column drift of the image statistics, acquisition and metadata columns and the
  prediction (``prob_abnormal``, ``label``) with ``DataDriftPreset``, and ``EmbeddingsDrift`` on
  the embedding summary (``emb_0``...). The embedding test runs on a random sample of at most
  ``monitor.embedding_max_rows`` rows per side (its t-SNE plot is the expensive part), so it is a
  second Evidently report; the two are merged into one snapshot, one HTML page and one workspace
  run.
- **Verdict**: three Evidently pass/fail tests, identified by their alias: ``column drift share``
  (share of drifted columns < ``monitor.drift_share``), ``prediction drift`` (``prob_abnormal``
  did not drift; only when ``monitor.prediction_drift_fails``) and ``embedding drift`` (the
  embedding score <= its calibrated threshold). Any failed test means drift. Fewer than
  ``monitor.min_current_rows`` current rows (or a reference below ``min_reference_rows``) gives
  the verdict "insufficient data" instead, with no Evidently run.
- **Embedding threshold**: the ``monitor.calibration_quantile`` quantile of the method's score
  over ``monitor.calibration_repeats`` random reference-vs-reference splits, times
  ``monitor.calibration_margin`` above the method's no-drift baseline (0, or 0.5 for the model
  method's ROC AUC). The pseudo-current part has the current sample's size rounded down to a
  power of two, so small windows get the wider threshold they need. Computed at the first run
  that needs it and cached next to the reports in
  ``<paths.monitor_dir>/calibration/<reference hash>.json`` (a new package has a new reference
  and so a new cache file).
- **Outputs** per run: ``<paths.monitor_dir>/runs/<UTC time>-<site or all>/report.html``
  (self-contained) and ``summary.json``, written together atomically, and the run added to the
  Evidently workspace ``<paths.monitor_dir>/workspace`` (project ``cxr-drift-<site>`` or
  ``cxr-drift-all``) that ``evidently ui --workspace reports/monitor/workspace`` serves.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from cxr_triage.atomic import (
    _replace_dir,
    _temporary_dir_for,
    write_json_atomically,
)
from cxr_triage.config import MonitorParams, Params
from cxr_triage.errors import ConfigError, DataError, InvalidImageError
from cxr_triage.inference.features import (
    ACQUISITION_COLUMNS,
    IMAGE_STAT_COLUMNS,
    METADATA_COLUMNS,
    UNKNOWN,
)
from cxr_triage.inference.layout import PACKAGE_FILE, REFERENCE_FILE
from cxr_triage.state import state_layout

__all__ = [
    "EMBEDDING_NAME",
    "MonitorResult",
    "current_from_images",
    "current_from_log",
    "load_reference",
    "run_monitoring",
]

log = logging.getLogger(__name__)

EMBEDDING_NAME = "embedding"
PREDICTION_COLUMN = "prob_abnormal"
NUMERIC_COLUMNS = (*IMAGE_STAT_COLUMNS, *ACQUISITION_COLUMNS, "emb_norm", PREDICTION_COLUMN)
CATEGORICAL_COLUMNS = (*METADATA_COLUMNS, "label")
# Test aliases: how the verdict finds its tests among the snapshot's.
COLUMN_SHARE_TEST = "column drift share"
PREDICTION_TEST = "prediction drift"
EMBEDDING_TEST = "embedding drift"
_EMBEDDING_COLUMN = re.compile(r"^emb_(\d+)$")
_METHOD_BASELINE = {"mmd": 0.0, "model": 0.5, "distance": 0.0, "ratio": 0.0}
_METHOD_LABEL = {"mmd": "MMD", "model": "model ROC AUC", "distance": "distance", "ratio": "ratio"}
_MIN_SPREAD = 1e-4  # keeps a calibrated threshold above the baseline when every split scores it
_SCORE_CHUNK = 256
_KS_MAX_REFERENCE_ROWS = 1000  # Evidently's own switch from K-S to Wasserstein


@dataclass(frozen=True)
class MonitorResult:
    """The outcome of one monitoring run.

    Attributes:
        drift: the verdict, decided by the Evidently pass/fail tests (False for
            "insufficient data": see ``status``).
        summary: JSON-safe summary, as written to ``json_path``.
        html_path: the self-contained HTML report.
        json_path: ``summary.json``.
    """

    drift: bool
    summary: dict[str, Any]
    html_path: Path
    json_path: Path

    @property
    def status(self) -> str:
        """``drift``, ``no_drift`` or ``insufficient_data``."""
        return str(self.summary["status"])

    def one_line(self) -> str:
        """The verdict and its evidence on one line, for logs, alerts and the CLI."""
        s = self.summary
        where = (
            f"{s['site'] or 'mixed/unknown sites'} vs {s['scope']} reference "
            f"({s['n_reference']} rows), "
            f"{s['n_current']} current rows"
        )
        if self.status == "insufficient_data":
            return f"INSUFFICIENT DATA: {s['reason']}; {where}; report: {self.html_path}"
        share = s["drift_share"]
        parts = [
            f"{len(s['drifted_columns'])}/{s['n_columns']} columns drifted (share {share:.2f} "
            f"{'>=' if share >= s['drift_share_threshold'] else '<'} "
            f"{s['drift_share_threshold']:.2f})"
        ]
        pred = s["prediction_drift"]
        parts.append(
            f"prediction {'drifted' if pred['drift'] else 'stable'} "
            f"({pred['method']} {_fmt(pred['score'])})"
        )
        emb = s["embedding_drift"]
        label = _METHOD_LABEL.get(emb["method"], emb["method"])
        parts.append(
            f"embeddings {'drifted' if emb['drift'] else 'stable'} ({label} "
            f"{_fmt(emb['score'])} {'>' if emb['drift'] else '<='} {_fmt(emb['threshold'])})"
        )
        head = "DRIFT" if self.drift else "NO DRIFT"
        return f"{head}: {', '.join(parts)}; {where}; report: {self.html_path}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"


# -- inputs -----------------------------------------------------------------------------------


def load_reference(package_dir: Path) -> pd.DataFrame:
    """The package's monitoring reference (features of its val and test images).

    Args:
        package_dir: a model package folder (``paths.package_dir``).

    Raises:
        DataError: the folder has no usable ``reference.parquet``.
    """
    path = Path(package_dir) / REFERENCE_FILE
    if not path.is_file():
        raise DataError(
            f"{path} not found: {package_dir} is not a model package with a monitoring "
            "reference; run `dvc repro package` or pass the package folder with --package DIR"
        )
    frame = pd.read_parquet(path)
    if not _embedding_columns(frame):
        raise DataError(
            f"{path} has no embedding summary columns (emb_0...); rebuild the package with "
            "`dvc repro package`"
        )
    return frame


def current_from_log(
    log_path: Path,
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    last: int | None = None,
) -> pd.DataFrame:
    """A window of the prediction log as current data.

    Args:
        log_path: the service's prediction log (``paths.prediction_log``).
        since, until: ISO 8601 times (UTC when no offset; a date alone is its midnight) or
            datetimes; rows with ``since <= ts < until``.
        last: only the most recent N rows of that window.

    Raises:
        DataError: the log does not exist.
        ConfigError: a time is not ISO 8601 or ``last`` is below 1.
    """
    from cxr_triage.inference.predlog import PredictionLog

    path = Path(log_path)
    if not path.is_file():
        raise DataError(
            f"prediction log {path} does not exist: serve some predictions first, or pass "
            "--log PATH (paths.prediction_log) or --images FOLDER"
        )
    if last is not None and last < 1:
        raise ConfigError(f"--last must be >= 1, got {last}")
    # A datetime (e.g. now - 24 h in a flow) is accepted too; the log compares ISO strings.
    since, until = (t.isoformat() if isinstance(t, datetime) else t for t in (since, until))
    predictions = PredictionLog(path)
    try:
        return predictions.read(since=since, until=until, last=last)
    finally:
        predictions.close()


def current_from_images(
    package_dir: Path, folder: Path, *, site: str | None = None
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Score every file under ``folder`` through the package's Predictor.

    Hidden files and folders (``.name``) are left out; every other file is either scored or
    reported as unreadable, never skipped silently.

    Args:
        package_dir: the model package to score with.
        folder: images (DICOM, PNG, JPEG), searched recursively.
        site: the site the images come from (fills the ``site`` column).

    Returns:
        The monitoring rows of the usable images, and ``(file, reason)`` for every file that
        could not be used.

    Raises:
        DataError: ``folder`` is not a folder or holds no files; the package is incomplete.
    """
    from cxr_triage.inference.batch import collect_files
    from cxr_triage.inference.predictor import Predictor

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass --images FOLDER with the images to check")
    files = collect_files([folder])
    if not files:
        raise DataError(f"{folder} holds no files; pass the folder that contains the images")
    predictor = Predictor(package_dir)
    metadata = {"site": site} if site else None
    prepared, unreadable = [], []
    for path in files:
        try:
            prepared.append(predictor.prepare(path, metadata))
        except InvalidImageError as exc:
            unreadable.append((str(path), f"{exc.reason}: {exc}"))
    frames = []
    for start in range(0, len(prepared), _SCORE_CHUNK):
        chunk = prepared[start : start + _SCORE_CHUNK]
        scores = predictor.score(np.stack([p.pixels for p in chunk]))
        frames.append(pd.DataFrame([p.features for p in predictor.predictions(chunk, scores)]))
    if unreadable:
        log.warning(
            "%d of %d files under %s are unreadable (first: %s: %s)",
            len(unreadable),
            len(files),
            folder,
            *unreadable[0],
        )
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return rows, unreadable


# -- the run ----------------------------------------------------------------------------------


def run_monitoring(
    params: Params,
    *,
    current: pd.DataFrame,
    package_dir: Path | None = None,
    site: str | None = None,
    out_dir: Path | None = None,
    source: Mapping[str, Any] | None = None,
) -> MonitorResult:
    """Compare ``current`` with the package's reference; write the report and the summary.

    Args:
        params: ``params.monitor`` (tests, thresholds), ``params.seed`` (sampling) and
            ``params.paths`` (defaults for the package and the output folder).
        current: monitoring rows (from :func:`current_from_log` or
            :func:`current_from_images`).
        package_dir: the model package (default ``paths.package_dir``).
        site: the site the current data is from; its rows alone are compared (and its
            reference rows, when there are enough). None: inferred when ``current`` holds a
            single known site.
        out_dir: the monitoring folder (default ``paths.monitor_dir``): ``runs/``,
            ``workspace/`` and ``calibration/`` go there.
        source: where ``current`` came from (log window, folder, unreadable files), recorded
            as ``summary["source"]``.

    Returns:
        The verdict, the summary and the report paths.

    Raises:
        DataError: no reference, the current data lacks monitoring columns, or ``site`` has no
            rows in ``current``.
        ConfigError: a ``monitor`` stat test name is unknown.
    """
    monitor = params.monitor
    package_dir = Path(package_dir or params.paths.package_dir)
    out_dir = Path(out_dir) if out_dir else state_layout().monitor_dir
    reference = load_reference(package_dir)
    embedding = _embedding_columns(reference)
    current, site, n_other_sites = _select_site(_clean(current, embedding), site)
    reference = _clean(reference, embedding)
    scoped, scope, scope_reason = _scope_reference(reference, site, monitor.min_reference_rows)
    created = datetime.now(UTC)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "created_at": created.isoformat(timespec="seconds"),
        "model_tag": _model_tag(package_dir),
        "package_dir": str(package_dir),
        "site": site,
        "scope": scope,
        "scope_reason": scope_reason,
        "n_reference": len(scoped),
        "n_current": len(current),
        "n_current_other_sites": n_other_sites,
        "current_model_tags": _value_counts(current, "model_tag"),
        "source": dict(source or {}),
        "retrain_on_drift": monitor.retrain_on_drift,
    }
    run_dir = _run_dir(out_dir, created, site)
    tmp = _temporary_dir_for(run_dir)
    html_tmp, json_tmp = tmp / "report.html", tmp / "summary.json"
    html_path, json_path = run_dir / "report.html", run_dir / "summary.json"
    summary["reports"] = {"html": str(html_path), "json": str(json_path)}

    try:
        reason = _insufficient(len(current), len(scoped), monitor)
        if reason is not None:
            summary.update(_empty_verdict(monitor), status="insufficient_data", reason=reason)
            html_tmp.write_text(_insufficient_html(summary), encoding="utf-8")
        else:
            snapshot = _evaluate(
                reference=scoped,
                current=current,
                embedding=embedding,
                monitor=monitor,
                seed=params.seed,
                calibration_dir=out_dir / "calibration",
                reference_key=_file_hash(package_dir / REFERENCE_FILE),
                summary=summary,
            )
            summary["retrain_recommended"] = bool(summary["drift"] and monitor.retrain_on_drift)
            project = f"cxr-drift-{_safe_name(site) if site else 'all'}"
            _set_identity(snapshot, summary, project)
            timings = summary["timings_s"]
            with _Timer(timings, "html"), _quiet():
                snapshot.save_html(str(html_tmp))  # a Path silently writes nothing (STACK §4)
            with _Timer(timings, "workspace"):
                workspace = _add_to_workspace(out_dir / "workspace", project, snapshot)
            summary["reports"].update(workspace)
            timings["total"] = time.perf_counter() - started
            summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        summary = _json_safe(summary)
        write_json_atomically(json_tmp, summary)
        _replace_dir(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # what a failed run left
    result = MonitorResult(
        drift=bool(summary["drift"]), summary=summary, html_path=html_path, json_path=json_path
    )
    log.info("%s", result.one_line())
    return result


def _empty_verdict(monitor: MonitorParams) -> dict[str, Any]:
    """The summary keys of a verdict, for a run without tests: same keys, no evidence."""
    return {
        "drift": False,
        "retrain_recommended": False,
        "n_columns": 0,
        "drifted_columns": [],
        "drift_share": None,
        "drift_share_threshold": monitor.drift_share,
        "ignored_columns": {},
        "image_statistics_drifted": [],
        "prediction_drift": {
            "column": PREDICTION_COLUMN,
            "method": None,
            "score": None,
            "threshold": None,
            "drift": False,
        },
        "embedding_drift": {
            "method": monitor.embedding_method,
            "score": None,
            "threshold": None,
            "drift": False,
        },
        "columns": {},
        "tests": [],
        "failed_tests": [],
        "timings_s": {},
    }


def _insufficient(n_current: int, n_reference: int, monitor: MonitorParams) -> str | None:
    if n_current < monitor.min_current_rows:
        return (
            f"{n_current} current rows < monitor.min_current_rows ({monitor.min_current_rows}); "
            "widen the window (--since/--last) or add images"
        )
    if n_reference < monitor.min_reference_rows:
        return (
            f"{n_reference} reference rows < monitor.min_reference_rows "
            f"({monitor.min_reference_rows}); package a model with more val/test images"
        )
    return None


# -- data preparation -------------------------------------------------------------------------


def _embedding_columns(frame: pd.DataFrame) -> list[str]:
    found = [(int(m.group(1)), c) for c in frame.columns if (m := _EMBEDDING_COLUMN.match(c))]
    return [c for _, c in sorted(found)]


def _clean(frame: pd.DataFrame, embedding: list[str]) -> pd.DataFrame:
    """The monitoring columns with uniform types: floats, and strings with ``unknown``."""
    required = [*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, *embedding]
    if frame.empty:  # an empty window, or a log that never had a prediction
        return pd.DataFrame({c: pd.Series(dtype=object) for c in [*required, "model_tag"]})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"the current data lacks monitoring columns {', '.join(missing)}: it was logged by a "
            "package with other settings (package.summary_components); monitor it with that "
            "package (--package DIR) or start the window after the switch (--since)"
        )
    out = pd.DataFrame(index=frame.index)
    for column in (*NUMERIC_COLUMNS, *embedding):
        out[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    for column in CATEGORICAL_COLUMNS:
        values = frame[column].astype(object).where(frame[column].notna(), UNKNOWN)
        out[column] = values.astype(str).replace({"": UNKNOWN, "nan": UNKNOWN, "None": UNKNOWN})
    if "model_tag" in frame.columns:
        out["model_tag"] = frame["model_tag"].astype(str)
    return out.reset_index(drop=True)


def _select_site(current: pd.DataFrame, site: str | None) -> tuple[pd.DataFrame, str | None, int]:
    """Keep ``site``'s rows (or infer the one site); returns rows, site, rows of other sites."""
    sites = current["site"]
    known = sorted(set(sites) - {UNKNOWN})
    if site is None:
        if len(known) == 1 and not (sites == UNKNOWN).any():
            return current, known[0], 0
        return current, None, 0
    if (sites == site).any():
        keep = sites == site
        return current[keep].reset_index(drop=True), site, int((~keep).sum())
    if not known:  # nothing says where the rows come from: the caller does
        return current.assign(site=site), site, 0
    raise DataError(
        f"the current data has no rows of site {site!r} (sites: {', '.join(known)}); "
        "check --site or leave it out to compare all rows"
    )


def _scope_reference(
    reference: pd.DataFrame, site: str | None, min_rows: int
) -> tuple[pd.DataFrame, str, str]:
    if site is None:
        return reference, "all", "current data is not from one known site"
    rows = reference[reference["site"] == site]
    if len(rows) == 0:
        return reference, "all", f"site {site} is not in the reference (a new site)"
    if len(rows) < min_rows:
        return (
            reference,
            "all",
            f"site {site} has only {len(rows)} reference rows < monitor.min_reference_rows "
            f"({min_rows})",
        )
    return rows.reset_index(drop=True), f"site {site}", f"{site} is a reference site"


def _compared_columns(
    reference: pd.DataFrame, current: pd.DataFrame, scope: str
) -> tuple[list[str], list[str], dict[str, str]]:
    """Numeric and categorical columns to test, and why any were left out."""
    ignored: dict[str, str] = {}
    if scope != "all":
        ignored["site"] = "one site on both sides"
    elif (current["site"] == UNKNOWN).all():
        ignored["site"] = "the current rows do not say their site"
    numeric, categorical = [], []
    for column in NUMERIC_COLUMNS:
        if reference[column].isna().all() or current[column].isna().all():
            ignored[column] = "no values on one side"
        else:
            numeric.append(column)
    categorical = [c for c in CATEGORICAL_COLUMNS if c not in ignored]
    return numeric, categorical, ignored


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


# -- Evidently --------------------------------------------------------------------------------


class _Timer:
    """Adds the seconds a block took to ``timings[name]``."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.timings[self.name] = self.timings.get(self.name, 0.0) + elapsed


@contextmanager
def _quiet() -> Iterator[None]:
    """Evidently's stat tests divide by zero on constant columns (harmless, and noisy)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _check_method(name: str | None, kind: str) -> None:
    if name is None:
        return
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    column_type = ColumnType.Numerical if kind == "num" else ColumnType.Categorical
    try:
        get_registered_stattest(name, column_type)
    except (ValueError, KeyError) as exc:  # Evidently's StatTest*Error are ValueErrors
        raise ConfigError(
            f"monitor.{kind}_method: {name!r} is not an Evidently stat test for "
            f"{column_type.value} columns ({exc}); use e.g. ks, wasserstein, psi, "
            "jensenshannon, chisquare, or null"
        ) from exc


def _evaluate(
    *,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    embedding: list[str],
    monitor: MonitorParams,
    seed: int,
    calibration_dir: Path,
    reference_key: str,
    summary: dict[str, Any],
) -> Any:
    """Run both Evidently reports, fill ``summary`` and return the merged snapshot."""
    timings: dict[str, float] = {}
    summary["timings_s"] = timings
    with _quiet():  # importing Evidently warns about numpy.core and litestar deprecations
        from evidently import DataDefinition, Dataset, Report
        from evidently.legacy.metrics import DataDriftTable
        from evidently.metrics import DriftedColumnsCount, EmbeddingsDrift
        from evidently.presets import DataDriftPreset
        from evidently.tests.numerical_tests import (
            EqualMetricTest,
            LessOrEqualMetricTest,
            LessThanMetricTest,
        )

    _check_method(monitor.num_method, "num")
    _check_method(monitor.cat_method, "cat")
    numeric, categorical, ignored = _compared_columns(reference, current, summary["scope"])
    columns = [*numeric, *categorical]
    ref_rows = _sample(reference, monitor.max_rows, seed)
    cur_rows = _sample(current, monitor.max_rows, seed + 1)
    # Evidently switches numeric columns with <= 5 distinct values to chi-square, which
    # explodes on one value the reference never had (img_p05 of a same-site batch): numbers
    # always get a numeric test.
    num_method = monitor.num_method or (
        "ks" if len(ref_rows) <= _KS_MAX_REFERENCE_ROWS else "wasserstein"
    )
    methods = {
        "num_method": num_method,
        "num_threshold": monitor.num_threshold,
        "cat_method": monitor.cat_method,
        "cat_threshold": monitor.cat_threshold,
    }
    column_metrics: list[Any] = [
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
        column_metrics.append(
            DriftedColumnsCount(
                columns=[PREDICTION_COLUMN],
                tests=[EqualMetricTest(expected=0, alias=PREDICTION_TEST)],
                **methods,
            )
        )
    column_metrics.append(
        DataDriftPreset(columns=columns, drift_share=monitor.drift_share, **methods)
    )
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    with _Timer(timings, "column_drift"), _quiet():
        columns_snapshot = Report(column_metrics, include_tests=False).run(
            current_data=Dataset.from_pandas(cur_rows[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(ref_rows[columns], data_definition=definition),
        )
        table, _ = columns_snapshot.context.get_legacy_metric(
            DataDriftTable(
                columns=columns,
                num_stattest=num_method,
                num_stattest_threshold=monitor.num_threshold,
                cat_stattest=monitor.cat_method,
                cat_stattest_threshold=monitor.cat_threshold,
            ),
            None,
            None,
        )

    emb_ref = _sample(reference[embedding], monitor.embedding_max_rows, seed + 2)
    emb_cur = _sample(current[embedding], monitor.embedding_max_rows, seed + 3)
    with _Timer(timings, "embedding_calibration"):
        calibration = _calibration(
            emb_ref, len(emb_cur), monitor, seed, calibration_dir, reference_key, summary["scope"]
        )
    threshold = calibration["threshold"]
    emb_definition = DataDefinition(
        numerical_columns=embedding, embeddings={EMBEDDING_NAME: embedding}
    )
    # One OpenMP thread: the t-SNE plot of EmbeddingsDrift runs 1000 short parallel
    # iterations, which spin-wait ~4x slower on 2 threads as soon as the cores are shared.
    with _Timer(timings, "embedding_drift"), _quiet(), threadpool_limits(1, user_api="openmp"):
        embedding_snapshot = Report(
            [
                EmbeddingsDrift(
                    embeddings_name=EMBEDDING_NAME,
                    drift_method=_drift_method(monitor.embedding_method, threshold),
                    tests=[LessOrEqualMetricTest(threshold=threshold, alias=EMBEDDING_TEST)],
                )
            ],
            include_tests=False,
        ).run(
            current_data=Dataset.from_pandas(emb_cur, data_definition=emb_definition),
            reference_data=Dataset.from_pandas(emb_ref, data_definition=emb_definition),
        )
    with _Timer(timings, "merge"):
        snapshot = _merge_snapshots(columns_snapshot, embedding_snapshot)
    _summarise(
        summary,
        snapshot=snapshot,
        table=table,
        columns=columns,
        ignored=ignored,
        reference=ref_rows,
        current=cur_rows,
        monitor=monitor,
        calibration=calibration,
        n_embedding=(len(emb_ref), len(emb_cur)),
    )
    return snapshot


def _drift_method(name: str, threshold: float) -> Any:
    from evidently.metrics.embeddings import (
        DistanceDriftMethod,
        MMDDriftMethod,
        ModelDriftMethod,
        RatioDriftMethod,
    )

    classes = {
        "mmd": MMDDriftMethod,
        "model": ModelDriftMethod,
        "distance": DistanceDriftMethod,
        "ratio": RatioDriftMethod,
    }
    return classes[name](threshold=threshold)


def _merge_snapshots(first: Any, second: Any) -> Any:
    """One snapshot holding both reports' metrics, widgets and tests (one HTML, one run)."""
    from evidently.core.report import Snapshot, metric_tests_stats, metric_tests_widget

    merged = first.dump_dict()
    extra = second.dump_dict()
    merged["metric_results"] = {**merged["metric_results"], **extra["metric_results"]}
    merged["top_level_metrics"] = [*merged["top_level_metrics"], *extra["top_level_metrics"]]
    merged["widgets"] = [*merged["widgets"], *extra["widgets"]]
    merged["tests_widgets"] = []
    snapshot = Snapshot.load_dict(merged)
    tests = snapshot.tests_results
    if tests:
        widgets = [metric_tests_stats(tests), metric_tests_widget(tests)]
        merged["tests_widgets"] = [w.dict() for w in widgets]
        snapshot = Snapshot.load_dict(merged)
    return snapshot


def _status(value: Any) -> str:
    return str(getattr(value, "value", value))


def _summarise(
    summary: dict[str, Any],
    *,
    snapshot: Any,
    table: Any,
    columns: list[str],
    ignored: dict[str, str],
    reference: pd.DataFrame,
    current: pd.DataFrame,
    monitor: MonitorParams,
    calibration: dict[str, Any],
    n_embedding: tuple[int, int],
) -> None:
    tests = []
    for test in snapshot.dict()["tests"]:
        alias = (test.get("test_config") or {}).get("alias")
        tests.append(
            {
                "alias": alias,
                "name": test["name"],
                "description": test["description"],
                "status": _status(test["status"]),
            }
        )
    by_alias = {t["alias"]: t for t in tests}
    failed = [t for t in tests if t["status"] in ("FAIL", "ERROR")]

    per_column: dict[str, dict[str, Any]] = {}
    for column in columns:
        drift = table.drift_by_columns[column]
        entry: dict[str, Any] = {
            "method": drift.stattest_name,
            "score": float(drift.drift_score),
            "threshold": float(drift.stattest_threshold),
            "drift": bool(drift.drift_detected),
        }
        if column in NUMERIC_COLUMNS:
            entry["reference_median"] = float(reference[column].median())
            entry["current_median"] = float(current[column].median())
        else:
            entry["reference_top"] = _value_counts(reference, column, top=3)
            entry["current_top"] = _value_counts(current, column, top=3)
        per_column[column] = entry
    drifted = [c for c in columns if per_column[c]["drift"]]
    pred = per_column.get(PREDICTION_COLUMN, {})
    embedding_test = by_alias.get(EMBEDDING_TEST, {})
    embedding_score = next(
        (
            float(m["value"])
            for m in snapshot.dict()["metrics"]
            if m["metric_name"].startswith("EmbeddingsDrift")
        ),
        None,
    )
    summary.update(
        status="drift" if failed else "no_drift",
        drift=bool(failed),
        n_columns=len(columns),
        drifted_columns=drifted,
        drift_share=len(drifted) / len(columns) if columns else 0.0,
        drift_share_threshold=monitor.drift_share,
        ignored_columns=ignored,
        image_statistics_drifted=[c for c in IMAGE_STAT_COLUMNS if c in drifted],
        prediction_drift={
            "column": PREDICTION_COLUMN,
            "method": pred.get("method"),
            "score": pred.get("score"),
            "threshold": pred.get("threshold"),
            "drift": bool(pred.get("drift", False)),
            "decides_verdict": PREDICTION_TEST in by_alias,
            "reference_abnormal_rate": _abnormal_rate(reference),
            "current_abnormal_rate": _abnormal_rate(current),
        },
        embedding_drift={
            "method": monitor.embedding_method,
            "score": embedding_score,
            "threshold": calibration["threshold"],
            "drift": embedding_test.get("status") in ("FAIL", "ERROR"),
            "n_reference_rows": n_embedding[0],
            "n_current_rows": n_embedding[1],
            "calibration": calibration,
        },
        columns=per_column,
        tests=tests,
        failed_tests=[t["alias"] or t["name"] for t in failed],
    )


def _abnormal_rate(frame: pd.DataFrame) -> float:
    return float((frame["label"] == "abnormal").mean()) if len(frame) else 0.0


def _value_counts(frame: pd.DataFrame, column: str, top: int | None = None) -> dict[str, Any]:
    if column not in frame.columns or frame.empty:
        return {}
    counts = frame[column].astype(str).value_counts()
    if top is not None:
        return {k: round(float(v) / len(frame), 3) for k, v in counts.head(top).items()}
    return {k: int(v) for k, v in counts.items()}


# -- embedding threshold calibration ----------------------------------------------------------


def _calibration(
    emb_ref: pd.DataFrame,
    n_current: int,
    monitor: MonitorParams,
    seed: int,
    cache_dir: Path,
    reference_key: str,
    scope: str,
) -> dict[str, Any]:
    """The embedding threshold for this reference and current size (cached)."""
    # Pseudo-current size: the current size rounded down to a power of two, at most half the
    # reference: smaller samples have noisier scores, so rounding down errs on the safe side.
    n_pseudo = min(2 ** int(math.log2(max(n_current, 2))), len(emb_ref) // 2)
    key = "|".join(
        str(v)
        for v in (
            scope,
            monitor.embedding_method,
            len(emb_ref),
            n_pseudo,
            monitor.calibration_repeats,
            monitor.calibration_quantile,
            monitor.calibration_margin,
            seed,
        )
    )
    cache_path = cache_dir / f"{reference_key}.json"
    cache: dict[str, Any] = {}
    if cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring an unreadable calibration cache %s", cache_path)
    if key in cache:
        return {**cache[key], "cached": True, "cache_file": str(cache_path)}

    rng = np.random.default_rng(seed)
    method = _drift_method(monitor.embedding_method, threshold=0.0)
    scores = []
    with _quiet():
        for _ in range(monitor.calibration_repeats):
            order = rng.permutation(len(emb_ref))
            pseudo_current = emb_ref.iloc[order[:n_pseudo]].reset_index(drop=True)
            pseudo_reference = emb_ref.iloc[order[n_pseudo:]].reset_index(drop=True)
            scores.append(float(method(pseudo_current, pseudo_reference)[0]))
    baseline = _METHOD_BASELINE[monitor.embedding_method]
    null_quantile = float(np.quantile(scores, monitor.calibration_quantile))
    threshold = baseline + max(null_quantile - baseline, _MIN_SPREAD) * monitor.calibration_margin
    entry = {
        "threshold": threshold,
        "null_quantile": null_quantile,
        "null_max": float(np.max(scores)),
        "quantile": monitor.calibration_quantile,
        "margin": monitor.calibration_margin,
        "repeats": monitor.calibration_repeats,
        "split_sizes": [len(emb_ref) - n_pseudo, n_pseudo],
    }
    cache[key] = entry
    write_json_atomically(cache_path, cache)
    return {**entry, "cached": False, "cache_file": str(cache_path)}


# -- outputs ----------------------------------------------------------------------------------


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:40] or "site"


def _run_dir(out_dir: Path, created: datetime, site: str | None) -> Path:
    runs = out_dir / "runs"
    base = f"{created.strftime('%Y%m%dT%H%M%SZ')}-{_safe_name(site) if site else 'all'}"
    candidate, n = runs / base, 1
    while candidate.exists():
        n += 1
        candidate = runs / f"{base}-{n}"
    return candidate


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _model_tag(package_dir: Path) -> str | None:
    try:
        return json.loads((package_dir / PACKAGE_FILE).read_text()).get("model_tag")
    except (OSError, json.JSONDecodeError):
        return None


def _set_identity(snapshot: Any, summary: dict[str, Any], project: str) -> None:
    snapshot.set_name(f"{project} {summary['created_at']} {summary['status']}")


def _add_to_workspace(workspace_dir: Path, project_name: str, snapshot: Any) -> dict[str, str]:
    """Add the run to the Evidently workspace (one project per site, or ``all``)."""
    workspace_dir.mkdir(parents=True, exist_ok=True)
    with _quiet():
        from evidently.ui.workspace import Workspace

        workspace = Workspace.create(str(workspace_dir))
        found = workspace.search_project(project_name)
        project = (
            found[0]
            if found
            else workspace.create_project(
                project_name,
                description="Chest X-ray triage drift monitoring (cxr-triage monitor)",
            )
        )
        ref = workspace.add_run(project.id, snapshot, include_data=False)
    return {
        "workspace": str(workspace_dir),
        "project": project_name,
        "project_id": str(project.id),
        "run_id": str(ref.id),
    }


def _insufficient_html(summary: dict[str, Any]) -> str:
    """A small self-contained page for a run without an Evidently report."""
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(summary.get(k)))}</td></tr>"
        for k in ("created_at", "site", "scope", "n_reference", "n_current", "model_tag")
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>cxr-triage drift: "
        "insufficient data</title></head><body><h1>Insufficient data</h1>"
        f"<p>{html.escape(str(summary['reason']))}</p><table>{rows}</table></body></html>\n"
    )


def _json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, NaN and infinities to None."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
