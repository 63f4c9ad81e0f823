"""Tests of cxr_triage.evaluation.fairness."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.fairness import age_band, largest_gaps, slice_metrics


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (0, "<40"),
        (39.9, "<40"),
        (40, "40-59"),
        (59, "40-59"),
        (60, "60-79"),
        (80, "80+"),
        (101, "80+"),
        (None, "unknown"),
        (float("nan"), "unknown"),
        (-3, "unknown"),
        (414, "unknown"),
        ("n/a", "unknown"),
    ],
)
def test_age_band(age: object, band: str) -> None:
    assert age_band(age) == band


def test_slice_metrics_rows_and_values(studies: pd.DataFrame) -> None:
    table = slice_metrics(studies, "label", "score", threshold=0.5, min_count=20)
    assert table.iloc[0][["slice", "value"]].tolist() == ["overall", "all"]
    assert table.iloc[0]["n"] == len(studies)
    ages = set(table.loc[table["slice"] == "age_band", "value"])
    assert ages == {"<40", "40-59", "60-79", "80+", "unknown"}
    site_a = table[(table["slice"] == "site") & (table["value"] == "A")].iloc[0]
    site_b = table[(table["slice"] == "site") & (table["value"] == "B")].iloc[0]
    assert site_a["auroc"] > 0.95 > site_b["auroc"]
    assert site_a["n"] + site_b["n"] == len(studies)
    assert site_a["n_patients"] == 200


def test_slice_metrics_single_class_slice_has_nan_auroc(studies: pd.DataFrame) -> None:
    studies = studies.assign(site=np.where(studies["label"] == 1, "C", studies["site"]))
    table = slice_metrics(studies, "label", "score", 0.5, slices=("site",), min_count=1)
    site_a = table[(table["slice"] == "site") & (table["value"] == "A")].iloc[0]
    assert math.isnan(site_a["auroc"])
    assert math.isnan(site_a["sensitivity"])
    assert not math.isnan(site_a["specificity"])


def test_small_slices_are_flagged_and_not_scored(studies: pd.DataFrame) -> None:
    studies = studies.assign(view_position=["LL"] * 5 + ["PA"] * (len(studies) - 5))
    table = slice_metrics(studies, "label", "score", 0.5, slices=("view_position",), min_count=30)
    lateral = table[table["value"] == "LL"].iloc[0]
    assert lateral["small"] and lateral["n"] == 5
    assert math.isnan(lateral["auroc"])


def test_largest_gaps_names_the_slice_with_the_biggest_difference(studies: pd.DataFrame) -> None:
    table = slice_metrics(studies, "label", "score", threshold=0.5, min_count=20)
    gaps = largest_gaps(table).set_index("metric")
    assert gaps.loc["auroc", "slice"] == "site"
    assert gaps.loc["auroc", "best_value"] == "A"
    assert gaps.loc["auroc", "worst_value"] == "B"
    site_rows = table[table["slice"] == "site"].set_index("value")
    expected = site_rows.loc["A", "auroc"] - site_rows.loc["B", "auroc"]
    assert gaps.loc["auroc", "gap"] == pytest.approx(expected)


def test_slice_metrics_missing_column_is_named(studies: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="manufacturer"):
        slice_metrics(studies, "label", "score", 0.5, slices=("manufacturer",))
    with pytest.raises(ConfigError, match="age"):
        slice_metrics(studies.drop(columns="age"), "label", "score", 0.5)
