"""The service in-process: the service class itself and its ASGI app (request guard included).

The ASGI tests run BentoML's own app for :class:`CxrTriage` in this process (Starlette's
TestClient, the scorer as a local dependency): the guard, BentoML's form parsing and temporary
upload files, the reader and the prediction log are all real.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_triage.errors import ConfigError
from cxr_triage.inference.predlog import PredictionLog

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:starlette"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

HANGUL_NAME = "흉" * 78 + "_chest-xray-1.dcm"  # 95 characters, 251 UTF-8 bytes (S2)


def _synth_dicom(tiny_pipeline) -> Path:
    return sorted(
        (Path(tiny_pipeline.params.paths.synth_dir) / "hospital_a" / "images").iterdir()
    )[0]


def _assert_error(response, status: int, reason: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["reason"] == reason and body["status"] == status, body
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def _logged(log_path: Path, request_id: str) -> int:
    frame = PredictionLog(log_path).read()
    return int((frame["request_id"] == request_id).sum())


# -- the instance -------------------------------------------------------------------------------


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


# -- the ASGI app -------------------------------------------------------------------------------


def test_service_asgi_predicts_with_one_request_id_and_no_key(asgi, tiny_pipeline) -> None:
    assert not os.environ.get("CXR_TRIAGE_API_KEY")
    with asgi() as client:
        response = client.post(
            "/predict", files={"image": ("a.dcm", _synth_dicom(tiny_pipeline).read_bytes())}
        )
        assert response.status_code == 200, response.text
        assert response.json()["request_id"] == response.headers["x-request-id"]
        assert [k for k in response.headers if "request-id" in k] == ["x-request-id"]
        info = client.post("/model_info").json()
        assert info["model_tag"] == response.json()["model_tag"]


def test_service_asgi_site_is_validated_as_documented(asgi, tiny_pipeline) -> None:
    image = ("a.dcm", _synth_dicom(tiny_pipeline).read_bytes())
    with asgi() as client:
        for site in ("bad site!", "x" * 65, "-starts-with-dash", "hôpital"):
            response = client.post("/predict", files={"image": image, "site": (None, site)})
            assert "site" in _assert_error(response, 400, "bad_request")["error"]
        numeric = client.post("/predict", files={"image": image, "site": (None, "7")})
        assert numeric.status_code == 200, numeric.text
        log_path = Path(os.environ["CXR_TRIAGE_PREDICTION_LOG"])
        frame = PredictionLog(log_path).read()
        assert frame.loc[frame["request_id"] == numeric.json()["request_id"], "site"].item() == "7"


def test_service_asgi_openapi_is_the_products(asgi, service_module) -> None:
    with asgi() as client:
        spec = client.get("/docs.json").json()
        page = client.get("/docs")
    info = spec["info"]
    assert info["title"].startswith("cxr-triage")
    assert info["version"] == service_module.DECLARED_MODEL_TAG
    assert "not for clinical use" in info["description"].lower()
    assert "BentoML Team" not in str(spec)
    for route, statuses in {
        "/predict": {"200", "400", "401", "413", "415", "422", "429", "503"},
        "/predict_batch": {"200", "400", "401", "413", "415", "429", "503"},
    }.items():
        responses = spec["paths"][route]["post"]["responses"]
        assert set(responses) == statuses, route
        assert "multipart/form-data" in spec["paths"][route]["post"]["requestBody"]["content"]
    site = spec["components"]["schemas"]["predict__Input"]["properties"]["site"]
    assert "pattern" in str(site)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "googletagmanager" not in page.text and "https://" not in page.text


# -- client metadata (../shared/bugs/s01_long_upload_filename) -----------------------------------


def test_service_asgi_client_metadata_cases_s1_to_s10(asgi, tiny_pipeline, shared_bugs) -> None:
    good = _synth_dicom(tiny_pipeline).read_bytes()
    p01 = (shared_bugs / "p01_png_chunk_valueerror" / "big_iccp.png").read_bytes()
    d03 = (shared_bugs / "d03_no_transfer_syntax" / "no_transfer_syntax.dcm").read_bytes()
    single = {
        "S1 254-byte ASCII name": (("a" * 250 + ".dcm", good, "application/dicom"), {200}),
        "S2 251-byte Hangul name": ((HANGUL_NAME, good, "application/dicom"), {200}),
        "S3 name with /": (("../../x/chest.dcm", good, "application/dicom"), {200}),
        "S4 short unicode name": (("흉부.dcm", good, "application/dicom"), {200}),
        "S5 zero-byte file": (("empty.dcm", b"", "application/dicom"), "4xx"),
        "S6 DICOM as text/plain": (("chest.dcm", good, "text/plain"), {200}),
        # S7/S8: 4xx from a reader that refuses them, 200 from one that decodes them.
        "S7 P01 PNG": (("p01.png", p01, "image/png"), "200 or 4xx"),
        "S8 D03 DICOM": (("d03.dcm", d03, "application/dicom"), "200 or 4xx"),
    }
    assert len(HANGUL_NAME) == 95 and len(HANGUL_NAME.encode()) == 251
    with asgi() as client:
        for case, (upload, expected) in single.items():
            response = client.post("/predict", files={"image": upload})
            status = response.status_code
            assert "request_id" in response.json(), (case, response.text)
            if expected == "4xx":
                assert 400 <= status < 500 and response.json()["reason"], (case, response.text)
            elif expected == "200 or 4xx":
                assert status == 200 or 400 <= status < 500, (case, response.text)
            else:
                assert status in expected, (case, response.text)
        s9 = client.post(
            "/predict_batch",
            files=[
                ("images", ("a.dcm", good)),
                ("images", ("p01.png", p01)),
                ("images", ("b.dcm", good)),
            ],
        )
        assert s9.status_code == 200, s9.text
        statuses = [r["status"] for r in s9.json()["results"]]
        assert statuses[0] == statuses[2] == 200 and (
            statuses[1] == 200 or 400 <= statuses[1] < 500
        )
        s10 = client.post(
            "/predict_batch",
            files=[("images", ("a.dcm", good)), ("images", ("b" * 300 + ".dcm", good))],
        )
        assert s10.status_code == 200, s10.text
        assert [r["status"] for r in s10.json()["results"]] == [200, 200]
        assert s10.json()["n_ok"] == 2


def test_service_asgi_unforeseen_failure_of_one_file_is_that_files_error(
    asgi, tiny_pipeline, monkeypatch
) -> None:
    from cxr_triage.inference.predictor import Predictor

    real = Predictor.prepare

    def flaky(self, source, metadata=None, **options):
        if Path(source).read_bytes().startswith(b"BOOM"):
            raise KeyError("a reader bug")  # outside the typed hierarchy
        return real(self, source, metadata, **options)

    monkeypatch.setattr(Predictor, "prepare", flaky)
    good = _synth_dicom(tiny_pipeline).read_bytes()
    with asgi() as client:
        one = client.post("/predict", files={"image": ("x.dcm", b"BOOM" + good)})
        _assert_error(one, 422, "invalid_image")
        batch = client.post(
            "/predict_batch",
            files=[
                ("images", ("a.dcm", good)),
                ("images", ("b.dcm", b"BOOM")),
                ("images", ("c.dcm", good)),
            ],
        )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["status"] for r in results] == [200, 422, 200]
    assert results[1]["error"]["reason"] == "invalid_image"


# -- the scorer failing -------------------------------------------------------------------------


class _FakeScorer:
    """Stands in for the scorer process: failing, too slow, or serving another model."""

    def __init__(self, real) -> None:
        self.real = real
        self.mode = "fail"
        self.to_async = self

    async def score(self, images):
        if self.mode == "fail":
            raise ConnectionResetError("the scorer process died")
        if self.mode == "slow":
            await asyncio.sleep(2)
        vectors = await self.real.to_async.score(images)
        if self.mode == "other model":
            return [v[:-1].tolist() + [12345.0] for v in vectors]
        return vectors


def test_service_asgi_scorer_failure_or_slowness_is_a_typed_503(
    asgi, tiny_pipeline, monkeypatch
) -> None:
    import bentoml

    image = {"image": ("a.dcm", _synth_dicom(tiny_pipeline).read_bytes())}
    monkeypatch.setenv("CXR_TRIAGE_SCORE_TIMEOUT_S", "0.5")
    with asgi() as client:
        instance = bentoml.get_current_service()
        fake = instance.scorer = _FakeScorer(instance.scorer)
        failed = client.post("/predict", files=image)
        _assert_error(failed, 503, "scorer_unavailable")
        assert failed.headers["retry-after"] == "5"
        fake.mode = "slow"
        _assert_error(client.post("/predict", files=image), 503, "overloaded")
        fake.mode = "other model"
        _assert_error(client.post("/predict", files=image), 503, "model_mismatch")
        fake.mode = "ok"
        assert client.post("/predict", files=image).status_code == 200


# -- the prediction log -------------------------------------------------------------------------


def test_service_prediction_log_unwritable_is_503_and_nothing_unlogged(
    asgi, tiny_pipeline, tmp_path, monkeypatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the log folder cannot be created under a file")
    monkeypatch.setenv("CXR_TRIAGE_PREDICTION_LOG", str(blocker / "p.sqlite"))
    with asgi() as client:  # starts anyway: the disk may come back
        response = client.post(
            "/predict", files={"image": ("a.dcm", _synth_dicom(tiny_pipeline).read_bytes())}
        )
    body = _assert_error(response, 503, "prediction_log_unavailable")
    assert "CXR_TRIAGE_STATE_DIR" in body["error"]
    assert response.headers["retry-after"] == "5"


def test_service_refuses_to_start_on_a_corrupt_log(service_module, tmp_path, monkeypatch) -> None:
    log_path = tmp_path / "predictions.sqlite"
    log_path.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("CXR_TRIAGE_PREDICTION_LOG", str(log_path))
    with pytest.raises(ConfigError, match="corrupt.*Move it"):
        service_module.CxrTriage()
    good = PredictionLog(tmp_path / "good.sqlite")
    good.append([{"request_id": "r", "model_tag": "m", "threshold": 0.5}])
    good.close()  # checkpointed into the file
    raw = bytearray((tmp_path / "good.sqlite").read_bytes())
    assert len(raw) >= 3 * 4096
    raw[4096 : 4096 + 8] = b"\xff" * 8  # page 2's header destroyed, behind a sound file header
    log_path.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="corrupt"):
        service_module.CxrTriage()


def test_service_refuses_a_log_inside_the_bentoml_store(service_module, monkeypatch) -> None:
    inside = Path(os.environ["BENTOML_HOME"]) / "bentos" / "cxr-triage" / "x" / "p.sqlite"
    monkeypatch.setenv("CXR_TRIAGE_PREDICTION_LOG", str(inside))
    with pytest.raises(ConfigError, match="inside the BentoML store"):
        service_module.CxrTriage()
    assert not inside.exists()


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_service_prediction_log_on_a_full_disk_is_503_until_space_returns(
    asgi, tiny_pipeline, tmp_path, monkeypatch
) -> None:
    image = {"image": ("a.dcm", _synth_dicom(tiny_pipeline).read_bytes())}
    with _tmpfs(tmp_path / "disk", "2m") as disk:
        log_path = disk / "predictions.sqlite"
        monkeypatch.setenv("CXR_TRIAGE_PREDICTION_LOG", str(log_path))
        with asgi() as client:
            first = client.post("/predict", files=image)
            assert first.status_code == 200, first.text
            filler = disk / "filler"
            with filler.open("wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(bytes(64 * 1024))
                    f.flush()
            full = client.post("/predict", files=image)
            _assert_error(full, 503, "prediction_log_unavailable")
            assert "full" in full.json()["error"]
            filler.unlink()
            back = client.post("/predict", files=image)
            assert back.status_code == 200, back.text
        frame = PredictionLog(log_path).read()
        ids = set(frame["request_id"])
        assert {first.json()["request_id"], back.json()["request_id"]} <= ids
        assert full.json()["request_id"] not in ids


def test_service_prediction_log_on_a_read_only_disk_is_503(
    asgi, tiny_pipeline, tmp_path, monkeypatch
) -> None:
    with _tmpfs(tmp_path / "disk", "2m") as disk:
        log_path = disk / "predictions.sqlite"
        log = PredictionLog(log_path)
        log.append([{"request_id": "before", "model_tag": "m", "threshold": 0.5}])
        log.close()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        monkeypatch.setenv("CXR_TRIAGE_PREDICTION_LOG", str(log_path))
        with asgi() as client:  # starts: a read-only disk is not corruption
            response = client.post(
                "/predict", files={"image": ("a.dcm", _synth_dicom(tiny_pipeline).read_bytes())}
            )
        _assert_error(response, 503, "prediction_log_unavailable")


def _stow_body(parts: list[bytes], boundary: str = "stow-boundary") -> tuple[dict, bytes]:
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    return headers, body + b"--" + boundary.encode() + b"--\r\n"


def test_stow_rs_stores_into_the_listener_spool(asgi, make_dicom, shared_data, tmp_path,
                                                monkeypatch) -> None:  # fmt: skip
    from cxr_triage.pacs.spool import Spool
    from cxr_triage.serving.dicomweb import _spool_and_settings

    good = make_dicom().read_bytes()
    ct = (shared_data / "dicom" / "CT_small.dcm").read_bytes()
    monkeypatch.delenv("CXR_TRIAGE_SALT", raising=False)
    monkeypatch.setenv("CXR_TRIAGE_PACS_SPOOL_DIR", str(tmp_path / "spool"))
    _spool_and_settings.cache_clear()
    with asgi() as client:
        headers, body = _stow_body([good])
        _assert_error(client.post("/studies", content=body, headers=headers), 503,
                      "spool_unavailable")  # fmt: skip
        monkeypatch.setenv("CXR_TRIAGE_SALT", "stow-test-salt-0123456789")
        headers, body = _stow_body([good, ct])
        partial = client.post("/studies", content=body, headers=headers)
        assert partial.status_code == 202, partial.text
        assert partial.headers["content-type"].startswith("application/dicom+json")
        (failed,) = partial.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0x0122]
        assert len(partial.json()["00081199"]["Value"]) == 1
        headers, body = _stow_body([ct])
        conflict = client.post("/studies", content=body, headers=headers)
        assert conflict.status_code == 409  # PS3.18's body, not rewritten by the guard
        assert conflict.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0122]
        headers, body = _stow_body([make_dicom(name="other.dcm").read_bytes()])
        wrong_study = client.post("/studies/1.2.3.4", content=body, headers=headers)
        assert wrong_study.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
        _assert_error(client.post("/studies", json={"x": 1}), 415, "unsupported_media_type")
    _spool_and_settings.cache_clear()
    (row,) = Spool(tmp_path / "spool").instances()
    assert (row.source, row.state) == ("stow", "received")
