"""The headline metrics file: the few figures `dvc metrics show` lists."""

from __future__ import annotations

import pytest

from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.headline import HEADLINE_KEYS, headline_metrics

DETAILED = {
    "candidate": "logreg",
    "threshold": 0.2259,
    "cv_auroc": 0.765,
    "test_auroc": 0.716,
    "test_auroc_ci_low": 0.628,
    "test_auroc_ci_high": 0.794,
    "test_ece": 0.086,
    "test_sensitivity": 0.989,
    "test_specificity": 0.065,
    "test_normal_cleared_share": 0.065,
    "test_worklist_cleared_share": 0.038,
}


def test_headline_copies_the_detailed_test_figures_under_short_keys():
    headline = headline_metrics(DETAILED)
    assert headline == {
        "winner": "logreg",
        "auroc": 0.716,
        "auroc_lo": 0.628,
        "auroc_hi": 0.794,
        "ece": 0.086,
        "sens": 0.989,
        "spec": 0.065,
        "cleared": 0.038,
    }
    assert list(headline) == list(HEADLINE_KEYS)


def test_headline_from_an_older_metrics_file_says_to_rerun_evaluate():
    older = {k: v for k, v in DETAILED.items() if k != "test_worklist_cleared_share"}
    with pytest.raises(ConfigError, match=r"test_worklist_cleared_share.*dvc repro evaluate"):
        headline_metrics(older)


def test_explanation_rows_pair_each_figure_with_its_baseline_and_drop_what_was_not_measured():
    from cxr_triage.inference.explain_report import headline_pair

    metrics = {
        "nih_hit_rate": 0.25,
        "nih_hit_rate_baseline": 0.125,
        "synthetic_hit_rate": 0.9,  # another run's boxes: not this row's
        "synthetic_hit_rate_baseline": 0.1,
        "deletion_auc": 0.55,
        "deletion_auc_random": 0.75,
        "sanity_rank_corr": float("nan"),  # every randomised map constant
        "sanity_rank_corr_other_images": 0.3,
    }
    maps, baselines = headline_pair(metrics, box="nih")
    assert maps == {"hit": 0.25, "del": 0.55}
    assert baselines == {"hit": 0.125, "del": 0.75}
    assert headline_pair(metrics, box="synthetic")[0]["hit"] == 0.9
