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


def test_an_ensemble_winner_is_packaged_and_scores_as_its_members_compute(tiny_pipeline, tmp_path):
    """An ensemble winner (frozen-feature members + the fine-tuned network) in one package:
    its probabilities equal the members' own predictions, calibrated and averaged in torch and
    scikit-learn, then the ensemble calibrator."""
    import shutil

    from cxr_triage.evaluation.calibration import calibrator_from_dict, make_calibrator
    from cxr_triage.inference.package import (
        PackageSources,
        RadiologistSettings,
        ReferenceSet,
        assemble_package,
    )
    from cxr_triage.io.records import ImageLimits
    from cxr_triage.models.artifacts import load_backbone, load_finetuned
    from cxr_triage.models.embed import embed_images
    from cxr_triage.models.finetune import predict_scores as network_scores
    from cxr_triage.models.transfer import load_candidate, predict_scores

    params = tiny_pipeline.params
    paths = params.paths
    data = load_dataset(paths.ingest_dir, paths.split_dir)
    dev, test = data.development_rows(), data.rows("test")
    y = data.labels(dev)
    zoo = pd.read_csv(Path(paths.transfer_dir) / "oof_scores.csv").query("repeat == 0")
    net = pd.read_csv(Path(paths.finetune_dir) / "oof_scores.csv").query("repeat == 0")
    chosen = json.loads((Path(paths.transfer_dir) / "configs.json").read_text())["chosen"]
    oof = {name: zoo[chosen[name]["config"]].to_numpy() for name in ("logreg", "knn")}
    oof["finetuned"] = net["finetuned"].to_numpy()
    calibrators = {name: make_calibrator("platt").fit(y, s) for name, s in oof.items()}
    mean = np.mean([calibrators[n].transform(oof[n]) for n in oof], axis=0)
    final = make_calibrator("platt").fit(y, mean)
    members = [
        {
            "candidate": n,
            "kind": "finetuned" if n == "finetuned" else "zoo",
            "calibrator": c.to_dict(),
        }
        for n, c in calibrators.items()
    ]
    compare_dir, threshold_dir = tmp_path / "compare", tmp_path / "threshold"
    compare_dir.mkdir(), threshold_dir.mkdir()
    winner = {
        "candidate": "ensemble_top3",
        "kind": "ensemble",
        "members": members,
        "calibrator": final.to_dict(),
        "reason": "test",
    }
    (compare_dir / "winner.json").write_text(json.dumps(winner))
    operating = json.loads((Path(paths.threshold_dir) / "threshold.json").read_text())
    (threshold_dir / "threshold.json").write_text(
        json.dumps({**operating, "candidate": "ensemble_top3"})
    )
    out = tmp_path / "package"
    info = assemble_package(
        out,
        sources=PackageSources(
            backbone_dir=Path(paths.backbone_dir),
            transfer_dir=Path(paths.transfer_dir),
            finetune_dir=Path(paths.finetune_dir),
            compare_dir=compare_dir,
            threshold_dir=threshold_dir,
        ),
        image_size=params.ingest.image_size,
        reference=ReferenceSet(
            np.asarray(data.pixels[dev]), data.manifest.loc[dev].reset_index(drop=True)
        ),
        summary_components=params.package.summary_components,
        limits=ImageLimits.from_params(params.ingest),
        settings=RadiologistSettings(params.qc, params.explain, params.similar, params.seed),
    )
    assert info["kind"] == "ensemble" and info["network_logit"] is True
    # No torch network for an ensemble: it is explained by occlusion through the ONNX network.
    assert info["torch_network"] is None and info["explain"]["method"] == "occlusion"
    assert sorted(p.name for p in out.glob("member-*.skops")) == [
        "member-knn.skops",
        "member-logreg.skops",
    ]
    pixels = np.asarray(data.pixels[test])
    packaged = Predictor(out).score(pixels).prob_abnormal

    backbone, _ = load_backbone(Path(paths.backbone_dir))
    embeddings = embed_images(backbone, pixels, mode="eager", progress=False)
    classifier, _ = load_finetuned(Path(paths.finetune_dir))
    raw = {
        "logreg": predict_scores(
            load_candidate(Path(paths.transfer_dir) / "logreg.skops"), embeddings
        ),
        "knn": predict_scores(load_candidate(Path(paths.transfer_dir) / "knn.skops"), embeddings),
        "finetuned": network_scores(classifier, pixels).astype(np.float64),
    }
    expected = calibrator_from_dict(final.to_dict()).transform(
        np.mean([calibrators[n].transform(raw[n]) for n in raw], axis=0)
    )
    np.testing.assert_allclose(packaged, expected, rtol=0, atol=1e-4)
    shutil.rmtree(out)
