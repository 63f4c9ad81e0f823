"""The package stage and the Predictor on a tiny trained pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_triage.data.dataset import load_dataset
from cxr_triage.errors import DataError, InvalidImageError
from cxr_triage.inference.features import monitoring_columns
from cxr_triage.inference.predictor import Predictor

pytestmark = pytest.mark.integration


def test_package_scores_test_images_exactly_as_evaluate_did(tiny_pipeline):
    params = tiny_pipeline.params
    predictor = Predictor(tiny_pipeline.package_dir)
    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    test = data.rows("test")
    scores = predictor.score(np.asarray(data.pixels[test]))
    evaluated = pd.read_csv(Path(params.paths.evaluate_dir) / "test_scores.csv")
    np.testing.assert_allclose(scores.prob_abnormal, evaluated["y_score"], rtol=0, atol=1e-6)
    info = json.loads((tiny_pipeline.package_dir / "package.json").read_text())
    assert info["model_tag"].startswith("cxr-triage:")
    assert (
        info["threshold"]
        == json.loads((Path(params.paths.threshold_dir) / "threshold.json").read_text())[
            "threshold"
        ]
    )
    assert "test_auroc" in info["metrics"] and info["versions"]["code"]


def test_reference_holds_val_and_test_monitoring_features(tiny_pipeline):
    params = tiny_pipeline.params
    reference = pd.read_parquet(tiny_pipeline.package_dir / "reference.parquet")
    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    assert len(reference) == len(data.rows("val")) + len(data.rows("test"))
    k = params.package.summary_components
    assert set(monitoring_columns(k)) <= set(reference.columns)
    assert set(reference["split"]) == {"val", "test"}
    # No identifier of any kind is in the reference.
    assert not {"patient_id", "study_id", "image_id"} & set(reference.columns)


def test_predict_files_reads_dicom_and_labels_at_the_threshold(tiny_pipeline):
    predictor = Predictor(tiny_pipeline.package_dir)
    files = sorted(
        (Path(tiny_pipeline.params.paths.synth_dir) / "hospital_a" / "images").iterdir()
    )
    predictions = predictor.predict(files[:4], {"site": "hospital_a"})
    assert len(predictions) == 4
    for p in predictions:
        assert 0 <= p.prob_abnormal <= 1
        assert p.label == ("abnormal" if p.prob_abnormal >= p.threshold else "normal")
        assert p.features["site"] == "hospital_a" and p.features["manufacturer"] != "unknown"
        assert "Not for clinical use" in p.to_dict()["disclaimer"]


def test_predictor_refuses_bad_input_and_bad_folders(tiny_pipeline, tmp_path):
    predictor = Predictor(tiny_pipeline.package_dir)
    with pytest.raises(InvalidImageError):
        predictor.prepare(b"this is not an image")
    with pytest.raises(DataError, match="not a model package"):
        Predictor(tmp_path)


def test_predictor_accepts_dicom_when_the_package_lists_modalities_in_lower_case(
    tiny_pipeline, tmp_path, make_dicom
):
    """``ingest.allowed_modalities: [cr, dx]`` is valid params; every consumer must read it so.

    Before ImageLimits normalised the case, the stage ingested such files (it upper-cased) but
    the Predictor (service, predict, gate) refused every DICOM as "wrong modality".
    """
    import json
    import shutil

    package = tmp_path / "package"
    shutil.copytree(tiny_pipeline.package_dir, package)
    info = json.loads((package / "package.json").read_text())
    info["limits"]["allowed_modalities"] = ["cr", "dx"]
    (package / "package.json").write_text(json.dumps(info))
    prediction = Predictor(package).predict([make_dicom(modality="DX")])[0]
    assert prediction.label in ("normal", "abnormal")
