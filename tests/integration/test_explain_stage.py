"""The ``explain`` stage on the tiny pipeline: every figure beside its baseline, with CIs, in
metrics.json, the randomisation curve, the model card section, and the package's card."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_explain_stage_reports_each_figure_beside_its_baseline(tiny_pipeline) -> None:
    from cxr_triage.stages import explain, package

    params = tiny_pipeline.params
    metrics = explain.run(params)
    out = Path(params.paths.explain_dir)
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics, nan_ok=True)
    assert metrics["method"] in ("gradcam", "occlusion")
    # The tiny synthetic test split has images with generator boxes.
    assert metrics["synthetic_n"] > 0
    for key in ("synthetic_hit_rate", "synthetic_miou", "deletion_auc", "insertion_auc"):
        base = "_baseline" if key.startswith("synthetic") else "_random"
        assert 0 <= metrics[key] <= 1 and 0 <= metrics[key + base] <= 1, key
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
    if "sanity_rank_corr" in metrics:
        curve = pd.read_csv(out / "sanity.csv")
        assert list(curve["randomised_layers"]) == list(range(1, len(curve) + 1))
        # A 32 px model can give constant maps (their rank correlation is NaN): present is enough.
        assert "sanity_rank_corr_other_images" in metrics
    section = (out / explain.SECTION_FILE).read_text()
    assert "centre-of-lung map" in section and "random order" in section
    # The package stage puts the section into the package's model card.
    package.run(params)
    card = (Path(params.paths.package_dir) / "model_card.md").read_text()
    assert "## Explanations" in card and "Model card" in card
