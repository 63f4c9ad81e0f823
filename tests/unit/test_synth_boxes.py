"""The generator's lesion boxes: written beside labels.csv without changing a pixel."""

from __future__ import annotations

import pandas as pd

from cxr_triage.data.synth import generate_dataset, site_profile
from cxr_triage.data.synth.cohort import plan_images
from cxr_triage.data.synth.config import SynthConfig
from cxr_triage.data.synth.generate import BOX_COLUMNS, BOXES_FILE
from cxr_triage.data.synth.lesions import DRAWN_BY
from cxr_triage.data.synth.render import render_image, render_image_with_boxes


def test_boxes_change_no_pixel_and_sit_inside_the_image() -> None:
    profile = site_profile("hospital_a")
    specs = [s for s in plan_images(16, profile, 5, SynthConfig()) if s.lesions][:4]
    assert specs, "the plan has images with findings"
    in_lung = {k for k, v in DRAWN_BY.items() if v.startswith("lesion_opacity")}
    for spec in specs:
        pixels, boxes = render_image_with_boxes(spec, profile, SynthConfig())
        assert (pixels == render_image(spec, profile, SynthConfig())).all()
        assert [b.finding for b in boxes] == [
            les.kind for les in spec.lesions if les.kind in in_lung
        ]
        for b in boxes:
            assert 0 <= b.x and 0 <= b.y and b.w > 0 and b.h > 0
            assert b.x + b.w <= spec.cols and b.y + b.h <= spec.rows
            # The finding is visible inside its box: denser (brighter) than the image around it.
            assert pixels[b.y : b.y + b.h, b.x : b.x + b.w].size < pixels.size / 2


def test_the_generator_writes_the_boxes_beside_the_labels(tmp_path) -> None:
    labels = generate_dataset(tmp_path / "site", n=10, site="hospital_b", seed=3)
    boxes = pd.read_csv(tmp_path / "site" / BOXES_FILE)
    assert tuple(boxes.columns) == BOX_COLUMNS
    assert set(boxes["Image Index"]) <= set(labels["Image Index"])
    for row in boxes.itertuples():
        findings = labels.set_index("Image Index").loc[row[1], "Finding Labels"].split("|")
        assert row[2] in findings
