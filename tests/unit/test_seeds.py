"""The seed-variance summary."""

from __future__ import annotations

import math

import pytest

from cxr_triage.evaluation.seeds import seeds_markdown, summarise_seeds


def test_summarise_seeds_reports_mean_sd_and_range() -> None:
    runs = [
        {"seed": 42, "winner": "rbf_svm", "test_auroc": 0.80, "cv_auroc": 0.84},
        {"seed": 1, "winner": "logreg", "test_auroc": 0.86, "cv_auroc": 0.85},
        {"seed": 2, "winner": "rbf_svm", "test_auroc": 0.83, "cv_auroc": math.nan},
    ]
    summary = summarise_seeds(runs)
    auroc = summary["metrics"]["test_auroc"]
    assert auroc["mean"] == pytest.approx(0.83)
    assert auroc["sd"] == pytest.approx(0.03)  # sample sd (ddof=1)
    assert (auroc["min"], auroc["max"], auroc["n"]) == (0.80, 0.86, 3)
    assert summary["metrics"]["cv_auroc"]["n"] == 2  # the NaN is left out
    assert summary["winners"] == {"rbf_svm": 2, "logreg": 1}
    text = seeds_markdown(summary, runs, "test")
    assert "| test AUROC | 0.830 ± 0.030 | 0.800 - 0.860 |" in text
    assert "| 1 | logreg |" in text
    assert math.isnan(summarise_seeds(runs[:1])["metrics"]["test_auroc"]["sd"])
