from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_triage.errors import ConfigError
from cxr_triage.models.networks import Classifier, build_backbone
from cxr_triage.models.weights import (
    OnnxEmbedder,
    export_onnx,
    load_backbone_weights,
    load_classifier_weights,
)
from helpers.weights import split_rgb


class _NotATensor:
    """Any class: unpickling it needs code execution, which weights_only refuses."""


def test_load_refuses_missing_and_unexpected_keys(tmp_path: Path) -> None:
    backbone = build_backbone("small_cnn")
    state = backbone.net.state_dict()
    del state["0.weight"]
    state["extra.weight"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match=r"missing keys \[0\.weight\].*extra\.weight"):
        load_backbone_weights(build_backbone("small_cnn"), tmp_path / "partial.pt")


def test_load_refuses_other_architecture(tmp_path: Path) -> None:
    torch.save(build_backbone("small_cnn").state_dict(), tmp_path / "small.pt")
    with pytest.raises(ConfigError, match="does not fit a resnet18 backbone"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "small.pt")


def test_load_refuses_pickled_objects(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "trainer": _NotATensor()}, tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="pickled Python objects"):
        load_backbone_weights(build_backbone("small_cnn"), tmp_path / "x.pt")


def test_load_refuses_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "w.h5").write_bytes(b"\x89HDF")
    with pytest.raises(ConfigError, match="unsupported weights file"):
        load_backbone_weights(build_backbone("small_cnn"), tmp_path / "w.h5")
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone_weights(build_backbone("small_cnn"), tmp_path / "absent.pt")


def test_load_torchvision_style_resnet18_with_rgb_stem(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = build_backbone("resnet18").eval()
    state = {k: v.clone() for k, v in source.net.state_dict().items()}
    state["conv1.weight"] = split_rgb(state["conv1.weight"])
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "r.pth")
    fresh = build_backbone("resnet18").eval()
    load_backbone_weights(fresh, tmp_path / "r.pth")
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(fresh(x), source(x))


def test_load_classifier_weights_keeps_head_only_when_it_fits(tmp_path: Path) -> None:
    torch.manual_seed(4)
    pretrained = Classifier(build_backbone("small_cnn"), 14)
    torch.save(pretrained.state_dict(), tmp_path / "pretrained.pt")

    same = Classifier(build_backbone("small_cnn"), 14)
    assert load_classifier_weights(same, tmp_path / "pretrained.pt").head_loaded
    for key, value in pretrained.state_dict().items():
        assert torch.equal(same.state_dict()[key], value)

    binary = Classifier(build_backbone("small_cnn"), 1)
    head_before = binary.head.weight.clone()
    report = load_classifier_weights(binary, tmp_path / "pretrained.pt")
    assert not report.head_loaded
    assert torch.equal(binary.head.weight, head_before)
    assert torch.equal(binary.backbone.net[0].weight, pretrained.backbone.net[0].weight)


def test_onnx_embedder_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(5)
    backbone = build_backbone("small_cnn").eval()
    path = export_onnx(backbone, tmp_path / "b.onnx", image_size=32)
    embedder = OnnxEmbedder(path, num_threads=1)
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = backbone(torch.from_numpy(x)).numpy()
    assert embedder.embedding_dim == backbone.embedding_dim
    np.testing.assert_allclose(embedder.embed(x), expected, rtol=1e-4, atol=1e-5)


def test_onnx_embedder_replicates_grey_for_rgb_models(tmp_path: Path) -> None:
    torch.manual_seed(6)
    rgb = build_backbone("small_cnn", in_channels=3).eval()
    embedder = OnnxEmbedder(export_onnx(rgb, tmp_path / "rgb.onnx", image_size=32))
    x = np.random.default_rng(1).standard_normal((2, 1, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = rgb(torch.from_numpy(np.repeat(x, 3, axis=1))).numpy()
    assert embedder.in_channels == 3
    np.testing.assert_allclose(embedder.embed(x), expected, rtol=1e-4, atol=1e-5)
