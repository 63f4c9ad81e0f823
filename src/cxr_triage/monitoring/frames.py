"""The two tables a drift check compares: the package's reference and the current rows.

Both are monitoring features (:mod:`cxr_triage.inference.features`). This module reads the
reference, gives both tables uniform types, keeps the monitored site's rows and picks the
reference rows they are compared with (:func:`prepare_comparison`).

- **Site**: with a site, only the current rows of that site are compared; without one, it is
  inferred when every current row says the same known site.
- **Scope**: when the current data comes from one site that the reference knows, with at least
  ``monitor.min_reference_rows`` rows, only that site's reference rows are used, so a batch from
  one training hospital is not flagged because the reference mixes hospitals; otherwise the
  whole reference. :attr:`Comparison.scope` says which and :attr:`Comparison.scope_reason` why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_triage.errors import DataError
from cxr_triage.inference.features import (
    ACQUISITION_COLUMNS,
    IMAGE_STAT_COLUMNS,
    METADATA_COLUMNS,
    UNKNOWN,
)
from cxr_triage.inference.layout import REFERENCE_FILE
from cxr_triage.vocabulary import ABNORMAL

__all__ = [
    "CATEGORICAL_COLUMNS",
    "NUMERIC_COLUMNS",
    "PREDICTION_COLUMN",
    "Comparison",
    "abnormal_rate",
    "compared_columns",
    "embedding_columns",
    "load_reference",
    "prepare_comparison",
    "sample",
    "value_counts",
]

PREDICTION_COLUMN = "prob_abnormal"
NUMERIC_COLUMNS = (*IMAGE_STAT_COLUMNS, *ACQUISITION_COLUMNS, "emb_norm", PREDICTION_COLUMN)
CATEGORICAL_COLUMNS = (*METADATA_COLUMNS, "label")
# Kept as they are when present: who predicted, at which threshold, and the fed-back read.
PASSTHROUGH_COLUMNS = ("model_tag", "threshold", "true_label")
_EMBEDDING_COLUMN = re.compile(r"^emb_(\d+)$")


def embedding_columns(frame: pd.DataFrame) -> list[str]:
    """The embedding summary columns ``emb_0``, ``emb_1``... of ``frame``, in index order."""
    found = [(int(m.group(1)), c) for c in frame.columns if (m := _EMBEDDING_COLUMN.match(c))]
    return [c for _, c in sorted(found)]


def load_reference(package_dir: Path) -> pd.DataFrame:
    """The package's monitoring reference (features of its val and test images).

    Args:
        package_dir: a model package folder.

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
    if not embedding_columns(frame):
        raise DataError(
            f"{path} has no embedding summary columns (emb_0...); rebuild the package with "
            "`dvc repro package`"
        )
    return frame


@dataclass(frozen=True)
class Comparison:
    """The rows a drift check compares, and how they were chosen.

    Attributes:
        reference: the reference rows in scope (cleaned).
        current: the current rows of the monitored site (cleaned).
        embedding: the embedding summary columns (``emb_0``...).
        site: the monitored site (given or inferred); None for mixed or unknown sites.
        scope: ``"site <name>"`` or ``"all"``: which reference rows are used.
        scope_reason: why.
        n_current_other_sites: current rows left out because they are of another site.
    """

    reference: pd.DataFrame
    current: pd.DataFrame
    embedding: list[str]
    site: str | None
    scope: str
    scope_reason: str
    n_current_other_sites: int


def prepare_comparison(
    reference: pd.DataFrame, current: pd.DataFrame, *, site: str | None, min_reference_rows: int
) -> Comparison:
    """Clean both tables, keep the site's current rows and choose the reference scope.

    Args:
        reference: the package's reference (:func:`load_reference`).
        current: current monitoring rows (any number, also none).
        site: the site the current data is from; None: inferred when there is a single one.
        min_reference_rows: a site's own reference rows are used only if there are this many.

    Raises:
        DataError: the current rows lack monitoring columns, or have no row of ``site``.
    """
    embedding = embedding_columns(reference)
    current, site, n_other_sites = _select_site(_clean(current, embedding), site)
    scoped, scope, reason = _scope_reference(
        _clean(reference, embedding), site, min_reference_rows
    )
    return Comparison(scoped, current, embedding, site, scope, reason, n_other_sites)


def _clean(frame: pd.DataFrame, embedding: list[str]) -> pd.DataFrame:
    """The monitoring columns with uniform types: floats, and strings with ``unknown``."""
    required = [*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, *embedding]
    if frame.empty:  # an empty window, or a log that never had a prediction
        columns = [*required, *PASSTHROUGH_COLUMNS]
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
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
    for column in PASSTHROUGH_COLUMNS[1:]:
        if column in frame.columns:
            out[column] = frame[column]
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


def compared_columns(
    reference: pd.DataFrame, current: pd.DataFrame, scope: str
) -> tuple[list[str], list[str], dict[str, str]]:
    """Numeric and categorical columns to test, and why any were left out."""
    ignored: dict[str, str] = {}
    if scope != "all":
        ignored["site"] = "one site on both sides"
    elif (current["site"] == UNKNOWN).all():
        ignored["site"] = "the current rows do not say their site"
    numeric = []
    for column in NUMERIC_COLUMNS:
        if reference[column].isna().all() or current[column].isna().all():
            ignored[column] = "no values on one side"
        else:
            numeric.append(column)
    categorical = [c for c in CATEGORICAL_COLUMNS if c not in ignored]
    return numeric, categorical, ignored


def sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most ``n`` rows of ``frame``, drawn at random with ``seed`` (all rows when fewer)."""
    if len(frame) <= n:
        return frame
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


def abnormal_rate(frame: pd.DataFrame) -> float:
    """Share of rows labelled abnormal (0 for no rows)."""
    return float((frame["label"] == ABNORMAL).mean()) if len(frame) else 0.0


def value_counts(frame: pd.DataFrame, column: str, top: int | None = None) -> dict[str, Any]:
    """Counts of each value of ``column``; with ``top``, the shares of the ``top`` most common."""
    if column not in frame.columns or frame.empty:
        return {}
    counts = frame[column].astype(str).value_counts()
    if top is not None:
        return {k: round(float(v) / len(frame), 3) for k, v in counts.head(top).items()}
    return {k: int(v) for k, v in counts.items()}
