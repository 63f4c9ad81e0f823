"""Explanations and similar cases through the package: the library, ``cxr-triage explain`` and
``similar``, and the service's ``/explain`` and ``/similar`` (in-process and through the ASGI
app with its request guard)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxr_triage.cli import app
from cxr_triage.inference.explain import Explainer, explain_source
from cxr_triage.inference.similar import similar_to_source
from helpers.dicom import synth_dicoms, with_header

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
runner = CliRunner()


def _synth(tiny_pipeline, n: int) -> list[Path]:
    return synth_dicoms(Path(tiny_pipeline.params.paths.synth_dir), n)


def _png(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.mark.parametrize("method", ["occlusion", "gradcam"])
def test_an_explanation_explains_the_predicted_probability_at_the_image_size(
    tiny_pipeline, tiny_predictor, method
) -> None:
    if method == "gradcam" and tiny_predictor.info["explain"]["method"] != "gradcam":
        pytest.skip(
            f"the tiny winner ({tiny_predictor.info['candidate']}) has no differentiable head"
        )
    path = _synth(tiny_pipeline, 1)[0]
    result = explain_source(Explainer(tiny_predictor, method=method), path)
    expected = tiny_predictor.predict([path])[0].prob_abnormal
    assert result.prediction.prob_abnormal == pytest.approx(expected, abs=1e-9)
    assert result.explanation.prob_abnormal == result.prediction.prob_abnormal
    saliency = result.saliency()
    assert saliency.shape == result.image.shape and saliency.dtype == np.float32
    assert 0 <= saliency.min() and saliency.max() <= 1 and saliency.max() > 0
    overlay = Image.open(io.BytesIO(result.overlay_png()))
    assert overlay.size == (result.image.shape[1], result.image.shape[0])
    assert overlay.mode == "RGB"


def test_gradcam_map_is_hottest_where_the_class_activation_is_highest(
    tiny_pipeline, tiny_predictor
) -> None:
    """The Grad-CAM map is Selvaraju et al.'s map, computed here by hand with hooks: activations
    of the target layer weighted by their mean gradient of the logit, ReLU. (MONAI's default
    postprocessing flips a map's magnitudes; a flipped map correlates negatively with this.)"""
    import torch

    from cxr_triage.data.preprocess import to_model_input

    explainer = Explainer(tiny_predictor, method="auto")
    if explainer.method != "gradcam":
        pytest.skip(f"the tiny winner ({tiny_predictor.info['candidate']}) uses occlusion")
    images = np.stack([tiny_predictor.prepare(p).pixels for p in _synth(tiny_pipeline, 4)])
    maps, _ = explainer.saliency(images)
    network = explainer.network
    layer = dict(network.logit.named_modules())[network.target_layer]
    seen: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.update(a=out))
    try:
        x = torch.from_numpy(to_model_input(images))
        with torch.enable_grad():
            logit = network.logit(x)
            (grads,) = torch.autograd.grad(logit.sum(), seen["a"])
    finally:
        handle.remove()
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * seen["a"]).sum(1)).detach().numpy()
    cells = cam.shape[-1]
    side = images.shape[-1]
    for saliency, by_hand in zip(maps, cam, strict=True):
        if by_hand.max() <= 0:
            continue
        pooled = saliency.reshape(cells, side // cells, cells, side // cells).mean(axis=(1, 3))
        assert np.corrcoef(pooled.ravel(), by_hand.ravel())[0, 1] > 0.8
        assert saliency.max() == pytest.approx(1.0)


def test_occlusion_map_is_where_hiding_the_image_lowers_the_probability(tiny_predictor) -> None:
    """Hiding the hottest occlusion patch lowers the probability more than hiding the coldest
    (the map is the measured drop; this re-measures it through the Predictor)."""
    from cxr_triage.data.preprocess import to_model_input

    explainer = Explainer(tiny_predictor, method="occlusion")
    rng = np.random.default_rng(0)
    side = tiny_predictor.image_size
    image = np.clip(rng.normal(128, 40, (side, side)), 0, 255).astype(np.uint8)
    saliency, scale = explainer.saliency(image[None])
    if scale[0] == 0:
        pytest.skip("no patch lowers the probability of this image")
    x = to_model_input(image[None])
    base = tiny_predictor.score_model_input(x)[0]
    mask = max(2, round(explainer.occlusion_mask * side))

    def hidden_at(cy: int, cx: int) -> float:
        y0, x0 = max(0, cy - mask // 2), max(0, cx - mask // 2)
        occluded = x.copy()
        occluded[..., y0 : y0 + mask, x0 : x0 + mask] = x.mean()
        return float(tiny_predictor.score_model_input(occluded)[0])

    hot = np.unravel_index(np.argmax(saliency[0]), saliency[0].shape)
    cold = np.unravel_index(np.argmin(saliency[0]), saliency[0].shape)
    assert base - hidden_at(*hot) > base - hidden_at(*cold)


def test_similar_cases_are_labelled_reference_images_nearest_first(tiny_pipeline, tiny_predictor):
    from cxr_triage.data.dataset import load_dataset

    paths = tiny_pipeline.params.paths
    data = load_dataset(paths.ingest_dir, paths.split_dir)
    reference_ids = set(data.manifest.loc[data.development_rows(), "image_id"])
    test_ids = set(data.manifest.loc[data.rows("test"), "image_id"])
    result = similar_to_source(tiny_predictor, _synth(tiny_pipeline, 1)[0], k=4)
    assert [c.rank for c in result.cases] == [1, 2, 3, 4]
    distances = [c.distance for c in result.cases]
    assert distances == sorted(distances)
    assert {c.image_id for c in result.cases} <= reference_ids
    assert not {c.image_id for c in result.cases} & test_ids  # test images are never shown
    assert all(c.label in ("normal", "abnormal") for c in result.cases)
    assert result.n_reference == len(reference_ids)
    # A reference image queried by its own embedding finds itself first, at distance ~0.
    row = data.development_rows()[0]
    own = tiny_predictor.embed(np.asarray(data.pixels[[row]]))
    first = tiny_predictor.similar_cases.search(own, 1)[0][0]
    assert first.image_id == data.manifest.loc[row, "image_id"]
    assert first.distance == pytest.approx(0, abs=1e-4)
    with pytest.raises(Exception, match="between 1 and 100"):
        similar_to_source(tiny_predictor, _synth(tiny_pipeline, 1)[0], k=0)


def test_cli_explain_writes_an_overlay_and_the_map(tiny_pipeline, tmp_path) -> None:
    path = _synth(tiny_pipeline, 1)[0]
    out, npy = tmp_path / "overlay.png", tmp_path / "map.npy"
    package = ["--package", str(tiny_pipeline.package_dir)]
    result = runner.invoke(
        app, ["explain", str(path), *package, "--out", str(out), "--saliency", str(npy)]
    )
    assert result.exit_code == 0, result.output
    saliency = np.load(npy)
    assert Image.open(out).size == (saliency.shape[1], saliency.shape[0])
    assert "prob_abnormal" in result.output and "not for clinical use" in result.output
    bad = runner.invoke(app, ["explain", str(path), *package, "--out", str(tmp_path / "x.jpg")])
    assert bad.exit_code == 1 and ".png" in bad.output


def test_cli_similar_lists_the_nearest_cases(tiny_pipeline) -> None:
    path = _synth(tiny_pipeline, 1)[0]
    package = ["--package", str(tiny_pipeline.package_dir)]
    result = runner.invoke(app, ["similar", str(path), *package, "--k", "3"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line[:1].isdigit()]
    assert len(lines) == 3
    as_json = runner.invoke(app, ["similar", str(path), *package, "--json"])
    body = json.loads(as_json.stdout)
    assert len(body["cases"]) == 5 and "Not for clinical use" in body["disclaimer"]


def test_service_explain_and_similar_in_process(service_module, tiny_pipeline, tmp_path) -> None:
    svc = service_module.CxrTriage()
    path = _synth(tiny_pipeline, 1)[0]
    predicted = asyncio.run(svc.predict(image=path))
    explained = asyncio.run(svc.explain(image=path))
    assert explained.prob_abnormal == pytest.approx(predicted.prob_abnormal, abs=1e-9)
    side = svc.predictor.image_size
    assert np.asarray(explained.saliency).shape == (side, side)
    assert _png(explained.heatmap_png).mode == "RGBA"
    assert _png(explained.overlay_png).size == (explained.cols, explained.rows)
    similar = asyncio.run(svc.similar(image=path, k=3))
    assert len(similar.cases) == 3 and similar.prob_abnormal == pytest.approx(
        predicted.prob_abnormal, abs=1e-9
    )
    with_header(path, tmp_path / "lat.dcm", ViewPosition="LL")
    for call in (svc.explain, svc.similar):
        refused = asyncio.run(call(image=tmp_path / "lat.dcm"))
        body = json.loads(refused.body)
        assert refused.status_code == 422 and body["reason"] == "qc_failed", body


def test_service_explain_and_similar_through_the_guard(asgi_app, tiny_pipeline) -> None:
    from starlette.testclient import TestClient

    data = _synth(tiny_pipeline, 1)[0].read_bytes()
    with TestClient(asgi_app) as client:
        ok = client.post("/similar", files={"image": ("a.dcm", data)}, data={"k": "2"})
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["cases"]) == 2
        bad_k = client.post("/similar", files={"image": ("a.dcm", data)}, data={"k": "0"})
        assert bad_k.status_code == 400 and bad_k.json()["reason"] == "bad_request"
        explained = client.post("/explain", files={"image": ("a.dcm", data)})
        assert explained.status_code == 200, explained.text
        assert explained.json()["method"] in ("gradcam", "occlusion")
        junk = client.post("/explain", files={"image": ("a.dcm", b"not an image")})
        assert junk.status_code == 415 and junk.json()["reason"] == "not_an_image"
        spec = client.get("/docs.json").json()
        assert {"/explain", "/similar"} <= set(spec["paths"])
