from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_triage.data.preprocess import iter_model_input, to_model_input
from cxr_triage.errors import ConfigError
from cxr_triage.models.embed import embed_images
from cxr_triage.models.networks import Backbone
from cxr_triage.models.weights import OnnxEmbedder, export_onnx


def _bare_forward(model: Backbone, images: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return model(torch.from_numpy(to_model_input(images))).numpy()


def test_embed_images_matches_bare_forward(backbone: Backbone, images: np.ndarray) -> None:
    out = embed_images(backbone, images, batch_size=8, progress=False)
    assert out.dtype == np.float32
    assert out.shape == (37, backbone.embedding_dim)
    np.testing.assert_allclose(out, _bare_forward(backbone, images), rtol=1e-5, atol=1e-5)


def test_embed_images_is_deterministic(backbone: Backbone, images: np.ndarray) -> None:
    first = embed_images(backbone, images, batch_size=16, progress=False)
    second = embed_images(backbone, images, batch_size=16, progress=False)
    assert np.array_equal(first, second)


def test_embed_images_reads_memmap(backbone: Backbone, images: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "pixels.npy", images)
    mapped = np.load(tmp_path / "pixels.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    out = embed_images(backbone, mapped, batch_size=10, progress=False)
    assert np.array_equal(out, embed_images(backbone, images, batch_size=10, progress=False))


def test_embed_images_restores_training_mode(backbone: Backbone, images: np.ndarray) -> None:
    backbone.train()
    embed_images(backbone, images[:4], progress=False)
    assert backbone.training
    assert all(p.is_contiguous() for p in backbone.parameters())
    backbone.eval()


@pytest.mark.parametrize(("mode", "atol"), [("channels_last", 1e-4), ("bfloat16", 0.15)])
def test_embed_images_fast_modes_agree_with_eager(
    backbone: Backbone, images: np.ndarray, mode: str, atol: float
) -> None:
    eager = embed_images(backbone, images, progress=False)
    fast = embed_images(backbone, images, mode=mode, progress=False)
    np.testing.assert_allclose(fast, eager, atol=atol, rtol=0.05)
    assert np.array_equal(fast, embed_images(backbone, images, mode=mode, progress=False))


def test_embed_images_onnx_modes(backbone: Backbone, images: np.ndarray, tmp_path: Path) -> None:
    eager = embed_images(backbone, images, progress=False)
    exported = embed_images(backbone, images, mode="onnx", num_threads=1, progress=False)
    np.testing.assert_allclose(exported, eager, rtol=1e-4, atol=1e-4)
    embedder = OnnxEmbedder(export_onnx(backbone, tmp_path / "b.onnx", image_size=32))
    np.testing.assert_allclose(embed_images(embedder, images, progress=False), exported, atol=1e-5)
    with pytest.raises(ConfigError, match="mode='onnx'"):
        embed_images(embedder, images, mode="eager", progress=False)


def test_embed_images_empty_input(backbone: Backbone) -> None:
    out = embed_images(backbone, np.zeros((0, 32, 32), np.uint8), progress=False)
    assert out.shape == (0, backbone.embedding_dim)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "tensorrt"}, "unknown embed mode"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_threads": 0}, "num_threads"),
    ],
)
def test_embed_images_refuses_bad_options(
    backbone: Backbone, images: np.ndarray, kwargs: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        embed_images(backbone, images, progress=False, **kwargs)


def test_embed_images_refuses_float_images(backbone: Backbone) -> None:
    with pytest.raises(ConfigError, match="uint8"):
        embed_images(backbone, np.zeros((2, 32, 32), np.float32), progress=False)


def test_iter_model_input_reraises_worker_errors() -> None:
    class Broken(np.ndarray):
        def __getitem__(self, item: object) -> np.ndarray:
            raise OSError("disk gone")

    broken = np.zeros((4, 8, 8), np.uint8).view(Broken)
    with pytest.raises(OSError, match="disk gone"):
        list(iter_model_input(broken, 2))


def test_iter_model_input_stops_cleanly_when_abandoned() -> None:
    batches = iter_model_input(np.zeros((100, 8, 8), np.uint8), 2)
    assert next(batches).shape == (2, 1, 8, 8)
    batches.close()
