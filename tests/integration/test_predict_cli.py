"""`cxr-triage predict`, `register` and `promote` on a tiny trained package."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cxr_triage.cli import app
from cxr_triage.inference.predictor import Predictor
from cxr_triage.inference.registry import serving_record
from helpers.commands import runner

pytestmark = pytest.mark.integration


def test_predict_scores_a_folder_and_lists_unreadable_files(
    tiny_pipeline, predict_folder, tmp_path
):
    out = tmp_path / "results.csv"
    args = ["predict", str(predict_folder), "--package", str(tiny_pipeline.package_dir)]
    result = runner.invoke(app, [*args, "--out", str(out), "--site", "hospital_c"])
    assert result.exit_code == 2, result.output  # some files unreadable: the run still finished
    frame = pd.read_csv(out)
    assert len(frame) == 9  # every non-hidden image file is a row; notes.txt is set aside
    by_name = frame.set_index(frame["path"].map(lambda p: Path(p).name))
    assert by_name.loc["ct.dcm", "reason"] == "wrong_modality"
    assert by_name.loc["noise.dcm", "reason"] == "not_an_image"
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 7 and ok["prob_abnormal"].between(0, 1).all()
    assert set(ok["label"]) <= {"normal", "abnormal"}
    assert "unreadable 2" in result.output
    assert "1 non-image files set aside (notes.txt)" in result.output
    # The same numbers as the Predictor called directly on the same files.
    direct = Predictor(tiny_pipeline.package_dir).predict(list(ok["path"]))
    assert [p.prob_abnormal for p in direct] == pytest.approx(list(ok["prob_abnormal"]))


def test_predict_parquet_with_features_and_clean_errors(tiny_pipeline, predict_folder, tmp_path):
    package = ["--package", str(tiny_pipeline.package_dir)]
    out = tmp_path / "r.parquet"
    result = runner.invoke(
        app, ["predict", str(predict_folder / "nested"), *package, "--out", str(out), "--features"]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert {"img_mean", "manufacturer", "emb_0", "emb_norm"} <= set(frame.columns)
    assert "patient_id" not in frame.columns
    bad = runner.invoke(
        app, ["predict", str(predict_folder), *package, "--out", str(tmp_path / "r.xlsx")]
    )
    assert bad.exit_code == 1 and "use a .csv or .parquet" in bad.output
    assert "Traceback" not in bad.output
    missing = runner.invoke(app, ["predict", str(tmp_path / "nope"), *package])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_register_then_predict_by_tag_and_promote(tiny_pipeline, predict_folder, tmp_path):
    result = runner.invoke(app, ["register", str(tiny_pipeline.package_dir)])
    assert result.exit_code == 0, result.output
    tag = result.output.strip()
    info = json.loads((tiny_pipeline.package_dir / "package.json").read_text())
    assert tag == info["model_tag"]
    scored = runner.invoke(app, ["predict", str(predict_folder / "nested"), "--model-tag", tag])
    assert scored.exit_code == 0 and tag in scored.output
    promoted = runner.invoke(app, ["promote", tag, "--reason", "test"])
    assert promoted.exit_code == 0, promoted.output
    assert serving_record()["tag"] == tag
    unknown = runner.invoke(app, ["promote", "cxr-triage:doesnotexist", "--reason", "x"])
    assert unknown.exit_code == 1 and "not in the BentoML store" in unknown.output
