"""The comparison stages (backbone .. evaluate) on tiny data, through their run() functions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_triage.config import Params, parse_section
from cxr_triage.stages import (
    backbone,
    compare,
    embed,
    evaluate,
    finetune,
    threshold,
    transfer,
)

pytestmark = pytest.mark.integration
# Everything before evaluate: none of these may read the test split.
BEFORE_TEST = (backbone, embed, transfer, finetune, compare, threshold)


def test_comparison_stages_write_a_complete_evaluation(tiny_pipeline_read_only):
    root, params = tiny_pipeline_read_only
    table = pd.read_csv(Path(params.paths.compare_dir) / "table.csv")
    assert set(table["candidate"]) == {
        "logreg",
        "knn",
        "finetuned",
        "metadata_only",
        "ensemble_top3",
    }
    assert table["cv_auroc_ci_low"].le(table["cv_auroc"]).all()
    assert (table["cv_auroc_se"] > 0).all() and (table["cv_auroc_gap"] >= 0).all()
    winner = json.loads((Path(params.paths.compare_dir) / "winner.json").read_text())
    assert winner["candidate"] in set(table["candidate"]) - {"metadata_only"}
    report = (Path(params.paths.compare_dir) / "table.md").read_text()
    for part in ("**Rule**", "BBC-CV", "nested CV", "**Ensembles**", "Winner per view"):
        assert part in report
    optimism = json.loads((Path(params.paths.compare_dir) / "optimism.json").read_text())
    assert optimism["bbc_cv"]["n"] > 0 and len(optimism["nested_folds"]) == 3
    # The label leak: the zoo re-scored on the first repeat with one backbone per fold.
    assert "**Backbone label leak, measured**" in report
    leak = optimism["label_leak"]
    assert leak["repeats"] == params.compare.fold_pretraining_repeats == 1
    assert {r["candidate"] for r in leak["rows"]} == {"logreg", "knn"}
    for r in leak["rows"]:
        assert r["label_leak"] == pytest.approx(
            r["cv_auroc_shared"] - r["cv_auroc_fold_pretrained"]
        )
    compared = json.loads((Path(params.paths.compare_dir) / "metrics.json").read_text())
    assert "cv_auroc_label_leak" in compared
    assert ("cv_auroc_fold_pretrained" in compared) == (winner["candidate"] in {"logreg", "knn"})
    fold_pretrained = pd.read_csv(
        Path(params.paths.transfer_dir) / "oof_scores_fold_pretrained.csv"
    )
    assert set(fold_pretrained["repeat"]) == {0}
    # Every development image is scored out of fold once per repeat; no test image is.
    oof = pd.read_csv(Path(params.paths.transfer_dir) / "oof_scores.csv")
    splits = pd.read_csv(Path(params.paths.split_dir) / "split.csv").set_index("image_id")
    assert set(oof["image_id"].map(splits["split"])) == {"train", "val"}
    assert oof.groupby("repeat")["image_id"].nunique().eq(len(oof) // 2).all()
    operating = json.loads((Path(params.paths.threshold_dir) / "threshold.json").read_text())
    assert operating["sensitivity"] >= params.threshold.target_sensitivity
    metrics = json.loads((Path(params.paths.evaluate_dir) / "metrics.json").read_text())
    assert (
        0 <= metrics["test_auroc_ci_low"] <= metrics["test_auroc"] <= metrics["test_auroc_ci_high"]
    )
    assert metrics["threshold"] == operating["threshold"]
    assert {"test_sensitivity_ci_low", "test_npv", "test_normal_cleared_share"} <= set(metrics)
    card = (Path(params.paths.evaluate_dir) / "model_card.md").read_text()
    assert "NOT FOR CLINICAL USE" in card and winner["candidate"] in card
    assert "synthetic stand-in" in card
    assert "| backbone label leak (CV AUROC) |" in card
    slices = pd.read_csv(Path(params.paths.evaluate_dir) / "slices.csv")
    assert {"sex", "age_band", "view_position", "site"} <= set(slices["slice"])
    for png in ("compare/roc.png", "compare/calibration.png", "evaluate/roc.png"):
        assert (root / "reports" / png).read_bytes()[:4] == b"\x89PNG"
    embeddings = np.load(Path(params.paths.embed_dir) / "embeddings.npy")
    assert embeddings.shape[0] == len(pd.read_csv(Path(params.paths.ingest_dir) / "manifest.csv"))


def _fingerprint(params: Params, root: Path) -> dict[str, bytes]:
    """Every file the stages before evaluate write (weights, classifiers, histories, reports,
    winner, threshold), but the embeddings, which cover the test images too.

    Byte equality across two runs also means no output holds a wall-clock time: DVC hashes
    these files, and a fresh clone must reproduce the hashes in ``dvc.lock``.
    """
    dirs = [
        params.paths.backbone_dir,
        params.paths.embed_dir,
        params.paths.transfer_dir,
        params.paths.finetune_dir,
        params.paths.compare_dir,
        params.paths.threshold_dir,
    ]
    files = [f for d in map(Path, dirs) for f in sorted(d.rglob("*")) if f.is_file()]
    assert len(files) > 20
    return {
        str(f.resolve().relative_to(root.resolve())): f.read_bytes()
        for f in files
        if f.name != "embeddings.npy"
    }


def test_test_split_never_influences_model_calibration_threshold_or_winner(
    tiny_pipeline_read_only, tmp_path, tiny_params_data
):
    root, params = tiny_pipeline_read_only
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    altered = parse_section(Params, tiny_params_data(copy), "")
    # Corrupt the test split: flip every label, replace every image with noise.
    manifest_path = Path(altered.paths.ingest_dir) / "manifest.csv"
    manifest = pd.read_csv(manifest_path, keep_default_na=False, dtype=str)
    splits = pd.read_csv(Path(altered.paths.split_dir) / "split.csv", dtype=str)
    is_test = manifest["image_id"].map(splits.set_index("image_id")["split"]).eq("test")
    assert is_test.sum() >= 5
    manifest.loc[is_test, "label"] = manifest.loc[is_test, "label"].map(
        {"normal": "abnormal", "abnormal": "normal"}
    )
    manifest.to_csv(manifest_path, index=False)
    pixels = np.load(Path(altered.paths.ingest_dir) / "pixels.npy", mmap_mode="r+")
    rng = np.random.default_rng(0)
    pixels[is_test.to_numpy()] = rng.integers(0, 255, pixels[is_test.to_numpy()].shape)
    pixels.flush()
    # Train from scratch: finished checkpoints in the copy would otherwise be resumed.
    shutil.rmtree(altered.paths.checkpoint_dir)
    for stage in BEFORE_TEST:
        stage.run(altered)
    before, after = _fingerprint(params, root), _fingerprint(altered, copy)
    assert sorted(after) == sorted(before)
    changed = [name for name in before if after[name] != before[name]]
    assert not changed, f"differ between two runs on the same train+val data: {changed}"
    # evaluate, which reads test, does see the change.
    evaluate.run(altered)
    before = json.loads((Path(params.paths.evaluate_dir) / "metrics.json").read_text())
    after = json.loads((Path(altered.paths.evaluate_dir) / "metrics.json").read_text())
    # The scores of the noise images change: log loss and Brier score (AUROC on a handful of
    # images takes few values and can land on the same one by chance).
    assert after["test_log_loss"] != before["test_log_loss"]
    assert after["test_brier"] != before["test_brier"]
