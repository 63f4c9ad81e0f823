"""Tests of cxr_triage.evaluation.compare."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.compare import WinnerRule, choose_winner, comparison_markdown


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "candidate": ["logreg", "rbf_svm", "finetune", "knn"],
            "val_auroc": [0.880, 0.884, 0.886, 0.850],
            "val_auroc_ci_low": [0.85, 0.86, 0.86, 0.82],
            "val_ece": [0.060, 0.030, 0.045, 0.010],
            "val_brier": [0.15, 0.14, 0.13, 0.17],
        }
    )


def test_choose_winner_breaks_auroc_ties_by_lowest_ece() -> None:
    winner = choose_winner(_table(), WinnerRule())
    # finetune is best by AUROC, rbf_svm is within 0.005 and better calibrated.
    assert winner.candidate == "rbf_svm"
    assert set(winner.tied) == {"finetune", "rbf_svm"}
    assert "val_ece" in winner.reason
    # logreg is 0.006 behind and knn further: not tied, so their ECE does not matter.
    assert "logreg" not in winner.tied and "knn" not in winner.tied


def test_choose_winner_without_tolerance_takes_the_best_primary() -> None:
    winner = choose_winner(_table(), WinnerRule(tie_tolerance=0.0))
    assert winner.candidate == "finetune"
    assert winner.tied == ("finetune",)
    assert winner.primary_value == pytest.approx(0.886)


def test_choose_winner_lower_is_better_primary() -> None:
    rule = WinnerRule(primary="val_brier", higher_is_better=False, tie_tolerance=0.0)
    assert choose_winner(_table(), rule).candidate == "finetune"


def test_choose_winner_tolerance_boundary_is_inclusive() -> None:
    table = pd.DataFrame(
        {"candidate": ["a", "b"], "val_auroc": [0.900, 0.895], "val_ece": [0.05, 0.01]}
    )
    assert choose_winner(table, WinnerRule(tie_tolerance=0.005)).candidate == "b"
    assert choose_winner(table, WinnerRule(tie_tolerance=0.004)).candidate == "a"


def test_choose_winner_exact_tie_is_deterministic_and_skips_nan() -> None:
    table = pd.DataFrame(
        {
            "candidate": ["zeta", "alpha", "broken"],
            "val_auroc": [0.9, 0.9, math.nan],
            "val_ece": [0.02, 0.02, 0.0],
        }
    )
    assert choose_winner(table).candidate == "alpha"


def test_choose_winner_missing_column_names_it() -> None:
    with pytest.raises(ConfigError, match="val_f1"):
        choose_winner(_table(), WinnerRule(primary="val_f1"))
    duplicated = pd.concat([_table(), _table().iloc[:1]])
    with pytest.raises(ConfigError, match="unique"):
        choose_winner(duplicated)


def test_comparison_markdown_formats_and_marks_the_winner() -> None:
    text = comparison_markdown(_table(), ["candidate", "val_auroc", "val_ece"], winner="rbf_svm")
    lines = text.strip().splitlines()
    assert lines[0] == "| candidate | val_auroc | val_ece |"
    assert lines[1] == "|---|---:|---:|"
    assert "| **rbf_svm** | **0.884** | **0.030** |" in lines
    assert len(lines) == 2 + 4
