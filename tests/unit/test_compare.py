"""Tests of the winner rule (cxr_triage.evaluation.compare) and of the whole selection
procedure (cxr_triage.evaluation.selection) on constructed out-of-fold score sets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxr_triage.config import CompareParams, EnsembleParams
from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.compare import WinnerRule, choose_winner, comparison_markdown
from cxr_triage.evaluation.selection import select_candidates

# The pre-CV rule: AUROC within 0.005 counts as equal, then the lowest ECE.
TOLERANCE = WinnerRule(
    primary="val_auroc", rule="tolerance", tie_tolerance=0.005, tie_breaker="val_ece"
)


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
    winner = choose_winner(_table(), TOLERANCE)
    # finetune is best by AUROC, rbf_svm is within 0.005 and better calibrated.
    assert winner.candidate == "rbf_svm"
    assert set(winner.tied) == {"finetune", "rbf_svm"}
    assert winner.best == "finetune"
    assert "val_ece" in winner.reason
    # logreg is 0.006 behind and knn further: not tied, so their ECE does not matter.
    assert "logreg" not in winner.tied and "knn" not in winner.tied


def test_choose_winner_without_tolerance_takes_the_best_primary() -> None:
    winner = choose_winner(_table(), WinnerRule(**{**TOLERANCE.__dict__, "tie_tolerance": 0.0}))
    assert winner.candidate == "finetune"
    assert winner.tied == ("finetune",)
    assert winner.primary_value == pytest.approx(0.886)


def test_choose_winner_lower_is_better_primary() -> None:
    rule = WinnerRule(
        primary="val_brier", higher_is_better=False, rule="tolerance", tie_breaker="val_ece"
    )
    assert choose_winner(_table(), rule).candidate == "finetune"


def test_choose_winner_tolerance_boundary_is_inclusive() -> None:
    table = pd.DataFrame(
        {"candidate": ["a", "b"], "val_auroc": [0.900, 0.895], "val_ece": [0.05, 0.01]}
    )
    wide = WinnerRule(**{**TOLERANCE.__dict__, "tie_tolerance": 0.005})
    narrow = WinnerRule(**{**TOLERANCE.__dict__, "tie_tolerance": 0.004})
    assert choose_winner(table, wide).candidate == "b"
    assert choose_winner(table, narrow).candidate == "a"


def test_choose_winner_exact_tie_is_deterministic_and_skips_nan() -> None:
    table = pd.DataFrame(
        {
            "candidate": ["zeta", "alpha", "broken"],
            "val_auroc": [0.9, 0.9, math.nan],
            "val_ece": [0.02, 0.02, 0.0],
        }
    )
    assert choose_winner(table, TOLERANCE).candidate == "alpha"


def test_choose_winner_missing_column_names_it() -> None:
    with pytest.raises(ConfigError, match="val_f1"):
        choose_winner(_table(), WinnerRule(**{**TOLERANCE.__dict__, "primary": "val_f1"}))
    duplicated = pd.concat([_table(), _table().iloc[:1]])
    with pytest.raises(ConfigError, match="unique"):
        choose_winner(duplicated, TOLERANCE)
    with pytest.raises(ConfigError, match="val_auroc_se"):
        choose_winner(_table(), WinnerRule(primary="val_auroc", tie_breaker="val_ece"))


def _cv_table(se: float, gap_se: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "candidate": ["mlp", "logreg", "metadata_only"],
            "cv_auroc": [0.86, 0.84, 0.95],
            "cv_auroc_se": [se, 0.02, 0.03],
            "cv_auroc_gap_se": [0.0, gap_se, 0.03],
            "complexity": [6, 1, 0],
            "eligible": [True, True, False],
        }
    )


def test_one_se_rule_prefers_the_simpler_candidate_within_one_standard_error() -> None:
    within = choose_winner(_cv_table(se=0.025, gap_se=0.001), WinnerRule())
    assert within.candidate == "logreg" and within.best == "mlp"
    assert set(within.tied) == {"mlp", "logreg"}
    assert "complexity" in within.reason
    outside = choose_winner(_cv_table(se=0.015, gap_se=0.1), WinnerRule())
    assert outside.candidate == "mlp" and outside.tied == ("mlp",)
    # Two standard errors widen the band enough to tie them again.
    two = WinnerRule(se_multiplier=2.0)
    assert choose_winner(_cv_table(se=0.015, gap_se=0.1), two).candidate == "logreg"


def test_paired_se_rule_uses_the_standard_error_of_each_gap() -> None:
    paired = WinnerRule(rule="paired_se")
    assert choose_winner(_cv_table(se=0.1, gap_se=0.025), paired).candidate == "logreg"
    # A consistent difference (small SE of the gap) decides even when each estimate is noisy.
    assert choose_winner(_cv_table(se=0.1, gap_se=0.005), paired).candidate == "mlp"


def test_ineligible_baseline_is_never_chosen_even_when_best() -> None:
    winner = choose_winner(_cv_table(se=0.0, gap_se=0.0), WinnerRule())
    assert winner.candidate == "mlp"
    assert "metadata_only" not in winner.tied


def test_comparison_markdown_formats_and_marks_the_winner() -> None:
    text = comparison_markdown(_table(), ["candidate", "val_auroc", "val_ece"], winner="rbf_svm")
    lines = text.strip().splitlines()
    assert lines[0] == "| candidate | val_auroc | val_ece |"
    assert lines[1] == "|---|---:|---:|"
    assert "| **rbf_svm** | **0.884** | **0.030** |" in lines
    assert len(lines) == 2 + 4


# --- the whole selection on constructed out-of-fold scores -----------------------------------

REPEATS = 2


def _scores(y: np.ndarray, signal: float, seed: int, shared: np.ndarray | None = None):
    """OOF-like probabilities (REPEATS, n): signal * y plus noise (partly ``shared``)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(REPEATS, y.size))
    if shared is not None:
        noise = 0.2 * noise + shared
    return 1.0 / (1.0 + np.exp(-(signal * (y - 0.5) + noise)))


def _select(configs: dict, y, groups, sizes=(3,)):
    params = CompareParams(
        n_boot=300, calibration_folds=3, ensemble=EnsembleParams(sizes=list(sizes))
    )
    family_of = {name: name.split("(")[0] for name in configs}
    return select_candidates(
        configs,
        family_of,
        {},
        y,
        groups,
        params,
        recalibration=dict.fromkeys(family_of.values(), "platt"),
        seed=0,
    )


def test_selection_clear_winner(labels) -> None:
    y, groups = labels
    configs = {
        "mlp(alpha=0.1)": _scores(y, 3.0, 1),
        "logreg(C=1)": _scores(y, 1.0, 2),
        "knn(k=10)": _scores(y, 0.8, 3),
    }
    selection = _select(configs, y, groups, sizes=())
    assert selection.winner.candidate == "mlp"
    assert selection.winner.tied == ("mlp",)
    table = selection.comparison.table.set_index("candidate")
    assert table.loc["logreg", "cv_auroc_gap"] > 3 * table.loc["logreg", "cv_auroc_gap_se"]


def test_selection_tie_within_uncertainty_goes_to_the_simpler(labels) -> None:
    y, groups = labels
    base = _scores(y, 1.5, 4)
    rng = np.random.default_rng(5)
    configs = {
        # The MLP is a hair better than logistic regression: well inside the noise.
        "mlp(alpha=0.1)": base + 0.002 * y + 1e-4 * rng.normal(size=base.shape),
        "logreg(C=1)": base,
        "knn(k=10)": _scores(y, 0.3, 6),
    }
    selection = _select(configs, y, groups, sizes=())
    table = selection.comparison.table.set_index("candidate")
    assert table.loc["mlp", "cv_auroc"] >= table.loc["logreg", "cv_auroc"]
    assert selection.winner.best == "mlp"
    assert selection.winner.candidate == "logreg"
    assert "knn" not in selection.winner.tied


def test_selection_ensemble_wins_only_when_clearly_better(labels) -> None:
    y, groups = labels
    # Independent errors: the calibrated average is far better than any member.
    independent = {
        "mlp(alpha=0.1)": _scores(y, 1.2, 7),
        "logreg(C=1)": _scores(y, 1.2, 8),
        "knn(k=10)": _scores(y, 1.2, 9),
    }
    selection = _select(independent, y, groups)
    assert selection.ensembles == {"ensemble_top3": tuple(selection.ensembles["ensemble_top3"])}
    assert set(selection.ensembles["ensemble_top3"]) == {"mlp", "logreg", "knn"}
    assert selection.winner.candidate == "ensemble_top3"
    # Shared errors: the average is no better than its members, so the simplest wins.
    shared = np.random.default_rng(10).normal(size=(REPEATS, y.size))
    correlated = {
        name: _scores(y, 1.2, seed, shared=shared)
        for name, seed in (("mlp(alpha=0.1)", 11), ("logreg(C=1)", 12), ("knn(k=10)", 13))
    }
    selection = _select(correlated, y, groups)
    assert "ensemble_top3" in selection.comparison.table["candidate"].to_list()
    assert selection.winner.candidate == "logreg"


def test_selection_picks_each_family_best_configuration(labels) -> None:
    y, groups = labels
    configs = {
        "logreg(C=0.01)": _scores(y, 0.5, 14),
        "logreg(C=1)": _scores(y, 2.0, 15),
        "knn(k=10)": _scores(y, 1.0, 16),
    }
    selection = _select(configs, y, groups, sizes=())
    assert selection.representatives == {"logreg": "logreg(C=1)", "knn": "knn(k=10)"}
