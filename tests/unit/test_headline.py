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
