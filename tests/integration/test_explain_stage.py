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
    # The rows `dvc metrics show` lists: the maps' figures and their baselines, same keys.
    maps = json.loads((out / explain.MAPS_FILE).read_text())
    baselines = json.loads((out / explain.BASELINES_FILE).read_text())
    assert list(maps) == list(baselines) and {"hit", "miou", "del", "ins"} <= set(maps)
    assert (maps["hit"], baselines["hit"]) == (
        metrics["synthetic_hit_rate"],
        metrics["synthetic_hit_rate_baseline"],
    )
    assert (maps["del"], baselines["del"]) == (
        metrics["deletion_auc"],
        metrics["deletion_auc_random"],
    )
    section = (out / explain.SECTION_FILE).read_text()
    assert "centre-of-lung map" in section and "random order" in section
    # The package stage puts the section into the package's model card.
    package.run(params)
    card = (Path(params.paths.package_dir) / "model_card.md").read_text()
    assert "## Explanations" in card and "Model card" in card


def test_nih_boxes_of_patients_the_package_was_developed_on_are_left_out(
    tiny_predictor, shared_data
) -> None:
    """On a run trained on NIH images, a boxed image of a train or val patient would grade the
    map on a film the model has seen: it is left out and counted."""
    from cxr_triage.inference.explain_report import nih_box_images

    nih = shared_data / "nih-cxr"
    bbox = nih / "BBox_List_2017.csv.gz"
    images, regions, groups, left_out = nih_box_images(nih, bbox, tiny_predictor)
    assert left_out == 0 and len(images) == len(regions) == len(groups) > 1
    assert regions.any(axis=(1, 2)).all()  # every image has its box on the model's input
    seen = str(groups[0])
    kept, _, kept_groups, left_out = nih_box_images(
        nih, bbox, tiny_predictor, seen_patient=lambda raw: raw == seen
    )
    assert left_out == int((groups == seen).sum()) >= 1
    assert len(kept) == len(images) - left_out and seen not in set(kept_groups)
