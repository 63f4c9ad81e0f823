"""The input quality gate through the package: recorded settings, the Predictor's verdicts, the
service's 422 ``qc_failed`` (nothing logged) and verdict in every prediction, ``cxr-triage
predict``'s refused rows, and the content rules with refusing settings on real images."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxr_triage.cli import app
from cxr_triage.data.dataset import load_dataset
from cxr_triage.errors import QcFailedError
from cxr_triage.inference.predlog import PredictionLog
from cxr_triage.inference.qc import CHECKS, QcSettings, QualityGate
from helpers.dicom import synth_dicoms, with_header

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
runner = CliRunner()


def _synth(tiny_pipeline, n: int) -> list[Path]:
    return synth_dicoms(Path(tiny_pipeline.params.paths.synth_dir), n)


def test_the_package_records_the_gate_and_passes_its_own_test_images(
    tiny_pipeline, tiny_predictor
):
    qc = tiny_predictor.info["qc"]
    assert set(qc["settings"]["actions"]) == set(CHECKS)
    assert qc["limits"]["inverted"] <= 0 and qc["limits"]["out_of_distribution"] > 0
    paths = tiny_pipeline.params.paths
    data = load_dataset(paths.ingest_dir, paths.split_dir)
    test = data.rows("test")
    meta = data.manifest.loc[test, ["view_position", "age", "orig_rows", "orig_cols"]]
    verdicts = tiny_predictor.quality_gate.check_many(
        np.asarray(data.pixels[test]), meta.to_dict(orient="records")
    )
    # The defaults accept every image of the synthetic source (README, Input quality gate).
    assert all(v.passed for v in verdicts), [v.to_dict()["failed"] for v in verdicts]


def test_content_rules_with_refusing_settings_catch_inverted_and_rotated(
    tiny_pipeline, tiny_predictor
):
    gate = QualityGate(
        QcSettings(actions={c: "refuse" for c in CHECKS} | {"out_of_distribution": "warn"}),
        tiny_predictor.quality_gate.model,
    )
    paths = tiny_pipeline.params.paths
    data = load_dataset(paths.ingest_dir, paths.split_dir)
    images = np.asarray(data.pixels[data.rows("test")])
    meta = [{}] * len(images)
    upright = np.mean([v.passed for v in gate.check_many(images, meta)])
    inverted = gate.check_many(255 - images, meta)
    rotated = gate.check_many(np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2))), meta)
    assert upright == 1.0
    # A 32 px model fitted on a few dozen images: most, not necessarily all, are caught.
    assert np.mean(["inverted" in v.to_dict()["failed"] for v in inverted]) >= 0.8
    assert np.mean(["rotated" in v.to_dict()["failed"] for v in rotated]) >= 0.8


def test_predictor_prepare_refuses_a_lateral_only_when_asked(
    tiny_pipeline, tiny_predictor, tmp_path
):
    lateral = with_header(_synth(tiny_pipeline, 1)[0], tmp_path / "lat.dcm", ViewPosition="LL")
    verdict = tiny_predictor.prepare(lateral).qc
    assert verdict.status == "refuse" and verdict.to_dict()["failed"] == ["view"]
    with pytest.raises(QcFailedError, match="lateral") as caught:
        tiny_predictor.prepare(lateral, enforce_qc=True)
    assert caught.value.checks == ("view",) and caught.value.http_status == 422


def test_service_answers_qc_failed_for_a_child_and_the_verdict_with_every_prediction(
    svc, tiny_pipeline, tmp_path
) -> None:
    good, other = _synth(tiny_pipeline, 2)
    child = with_header(other, tmp_path / "child.dcm", PatientAge="009Y")
    result = asyncio.run(svc.predict(image=good, site="hospital_a"))
    assert result.qc is not None and result.qc.status in ("pass", "warn")
    assert {c.name for c in result.qc.checks} >= {"view", "pediatric", "inverted"}
    before = len(PredictionLog(svc.log_path).read())
    refused = asyncio.run(svc.predict(image=child))
    assert refused.status_code == 422
    body = json.loads(refused.body)
    assert body["reason"] == "qc_failed" and body["checks"] == ["pediatric"], body
    assert "adult" in body["error"]
    assert len(PredictionLog(svc.log_path).read()) == before  # a refusal is no prediction
    batch = asyncio.run(svc.predict_batch(images=[child, good]))
    assert (batch.n_ok, batch.n_failed) == (1, 1)
    assert batch.results[0].status == 422 and batch.results[0].error.checks == ["pediatric"]
    assert batch.results[1].prediction.qc.status in ("pass", "warn")


def test_predict_cli_lists_refused_files_with_their_checks(tiny_pipeline, tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    first, second = _synth(tiny_pipeline, 2)
    with_header(first, folder / "lateral.dcm", ViewPosition="RL")
    with_header(second, folder / "frontal.dcm", ViewPosition="PA")
    out = tmp_path / "r.csv"
    result = runner.invoke(
        app,
        ["predict", str(folder), "--package", str(tiny_pipeline.package_dir), "--out", str(out)],
    )
    assert result.exit_code == 2, result.output
    frame = pd.read_csv(out)
    by_name = frame.set_index(frame["path"].map(lambda p: Path(p).name))
    assert by_name.loc["lateral.dcm", "status"] == "refused"
    assert by_name.loc["lateral.dcm", "reason"] == "qc_failed"
    assert by_name.loc["lateral.dcm", "qc_failed"] == "view"
    assert pd.isna(by_name.loc["lateral.dcm", "prob_abnormal"])
    assert by_name.loc["frontal.dcm", "status"] == "ok"
    assert by_name.loc["frontal.dcm", "qc"] in ("pass", "warn")
    assert "refused by the quality gate 1: {'view': 1}" in result.output
