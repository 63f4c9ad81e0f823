"""The service in-process: the service class itself, its ASGI app and its request guard."""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from cxr_triage.inference.predlog import PredictionLog
from cxr_triage.inference.registry import register_package

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:starlette"),
]


@pytest.fixture(scope="module")
def service_module(tiny_pipeline, tmp_path_factory) -> Iterator[ModuleType]:
    """``cxr_triage.serving.service`` imported for the tiny package, logging to a temp file."""
    tag = register_package(tiny_pipeline.package_dir)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CXR_TRIAGE_MODEL_TAG", tag)
        env.setenv("CXR_TRIAGE_PREDICTION_LOG", str(tmp_path_factory.mktemp("log") / "p.sqlite"))
        yield importlib.import_module("cxr_triage.serving.service")


@pytest.fixture(scope="module")
def svc(service_module):
    return service_module.CxrTriage()  # the instance, dependencies resolved in-process


def _synth_dicom(tiny_pipeline) -> Path:
    return sorted(
        (Path(tiny_pipeline.params.paths.synth_dir) / "hospital_a" / "images").iterdir()
    )[0]


def test_service_in_process_predict_labels_at_threshold_and_logs(svc, tiny_pipeline) -> None:
    result = asyncio.run(svc.predict(image=_synth_dicom(tiny_pipeline), site="hospital_a"))
    assert result.label == ("abnormal" if result.prob_abnormal >= result.threshold else "normal")
    assert result.model_tag == svc.predictor.model_tag
    assert "Not for clinical use" in result.disclaimer
    logged = PredictionLog(svc.log_path).read()
    row = logged[logged["request_id"] == result.request_id]
    assert len(row) == 1 and row["site"].iloc[0] == "hospital_a"
    assert row["threshold"].iloc[0] == result.threshold


def test_service_in_process_matches_predictor_and_batch_isolates_errors(
    svc, tiny_pipeline, tmp_path
) -> None:
    from cxr_triage.inference.predictor import Predictor

    path = _synth_dicom(tiny_pipeline)
    expected = Predictor(tiny_pipeline.package_dir).predict([path])[0].prob_abnormal
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not an image at all")
    batch = asyncio.run(svc.predict_batch(images=[junk, path]))
    assert (batch.n_ok, batch.n_failed) == (1, 1)
    assert batch.results[0].status == 415 and batch.results[0].error.reason == "not_an_image"
    assert batch.results[1].prediction.prob_abnormal == pytest.approx(expected, abs=1e-9)
    empty = asyncio.run(svc.predict_batch(images=[]))
    assert empty.status_code == 400


def test_service_in_process_unusable_image_is_a_4xx_response(svc, make_dicom) -> None:
    response = asyncio.run(svc.predict(image=make_dicom(modality="MR")))
    assert response.status_code == 422
    assert b"wrong_modality" in response.body and b"CR or DX" in response.body


def test_service_prediction_log_failure_is_503(
    service_module, tiny_pipeline, tmp_path, monkeypatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the log folder cannot be created under a file")
    monkeypatch.setenv("CXR_TRIAGE_PREDICTION_LOG", str(blocker / "p.sqlite"))
    broken = service_module.CxrTriage()
    response = asyncio.run(broken.predict(image=_synth_dicom(tiny_pipeline)))
    assert response.status_code == 503
    assert b"prediction_log_unavailable" in response.body
    assert b"CXR_TRIAGE_PREDICTION_LOG" in response.body
    assert response.headers["retry-after"] == "5"


def test_service_asgi_app_without_api_key_is_open(service_module, tiny_pipeline) -> None:
    from starlette.testclient import TestClient

    assert not os.environ.get(service_module.API_KEY_ENV)
    with TestClient(service_module.CxrTriage.to_asgi()) as client:
        response = client.post(
            "/predict", files={"image": ("a.dcm", _synth_dicom(tiny_pipeline).read_bytes())}
        )
        assert response.status_code == 200, response.text
        assert response.json()["request_id"] == response.headers["x-request-id"]
        info = client.post("/model_info").json()
        assert info["model_tag"] == response.json()["model_tag"]


def test_request_guard_refuses_chunked_oversize_and_passes_the_body_on(service_module) -> None:
    seen: list[bytes] = []

    async def app(scope, receive, send):
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = service_module.RequestGuard(app, api_key="", max_body_bytes=1000)
    transport = httpx.ASGITransport(app=guard)

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            async def chunks():  # no Content-Length: streamed
                yield b"x" * 600
                yield b"y" * 600

            big = await client.post(
                "/predict",
                content=chunks(),
                headers={"Content-Type": "multipart/form-data; boundary=x"},
            )
            small = await client.post("/predict", files={"image": ("a.png", b"123")})
            return big, small

    big, small = asyncio.run(run())
    assert big.status_code == 413 and big.json()["reason"] == "body_too_large"
    assert small.status_code == 200 and b'filename="a.png"' in seen[-1]
