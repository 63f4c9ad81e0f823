from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cxr_triage.errors import ConfigError
from cxr_triage.models.networks import Backbone, Classifier, build_backbone
from cxr_triage.models.weights import (
    OnnxEmbedder,
    export_onnx,
    load_backbone_weights,
    load_classifier_weights,
)

_MONAI_DENSE = re.compile(r"^(.*denselayer\d+)\.layers\.(.+)$")


class _NotATensor:
    """Any class: unpickling it needs code execution, which weights_only refuses."""


def _split_rgb(weight: torch.Tensor) -> torch.Tensor:
    """Three RGB slices that sum back to ``weight`` exactly (w/3 alone is not exact in float)."""
    third = weight / 3
    return torch.cat([third, third, weight - 2 * third], dim=1)


def _to_torchvision(state: dict[str, torch.Tensor], old_style: bool) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = _MONAI_DENSE.sub(r"\1.\2", key)
        if old_style:
            key = re.sub(r"\.(norm|relu|conv)([12])\.", r".\1.\2.", key)
        if key == "features.conv0.weight":
            value = _split_rgb(value)
        out[key] = value.clone()
    return out


@pytest.fixture(scope="module")
def densenet_reference() -> tuple[Backbone, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    backbone = build_backbone("densenet121").eval()
    # Non-trivial BatchNorm statistics so a wrongly mapped running mean would show.
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = backbone(x)
    return backbone, x, expected


def _assert_loads_to_same_outputs(path: Path, reference: tuple) -> None:
    source, x, expected = reference
    torch.manual_seed(99)
    fresh = build_backbone("densenet121").eval()
    report = load_backbone_weights(fresh, path)
    with torch.inference_mode():
        got = fresh(x)
    assert torch.equal(got, expected)
    assert report.reduced_first_conv == ("features.conv0.weight",)
    assert not report.head_loaded
    assert report.dropped == ("bias", "weight")


def test_load_torchvision_densenet_pt(tmp_path: Path, densenet_reference: tuple) -> None:
    state = _to_torchvision(densenet_reference[0].net.state_dict(), old_style=False)
    assert "features.denseblock1.denselayer1.norm1.weight" in state
    state["classifier.weight"] = torch.randn(1000, 1024)
    state["classifier.bias"] = torch.randn(1000)
    torch.save(state, tmp_path / "densenet121.pth")
    _assert_loads_to_same_outputs(tmp_path / "densenet121.pth", densenet_reference)


def test_load_torchvision_densenet_safetensors(tmp_path: Path, densenet_reference: tuple) -> None:
    state = _to_torchvision(densenet_reference[0].net.state_dict(), old_style=False)
    state["classifier.weight"] = torch.randn(1000, 1024)
    state["classifier.bias"] = torch.randn(1000)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "densenet.safetensors")
    _assert_loads_to_same_outputs(tmp_path / "densenet.safetensors", densenet_reference)


def test_load_chexnet_style_checkpoint(tmp_path: Path, densenet_reference: tuple) -> None:
    state = _to_torchvision(densenet_reference[0].net.state_dict(), old_style=True)
    assert "features.denseblock1.denselayer1.norm.1.weight" in state
    # CheXNet: DataParallel around a wrapper whose torchvision model is `.densenet121`, old
    # (pre-0.4.1) BatchNorm without counters, a 14-finding head in a Sequential, trainer fields.
    wrapped = {
        f"module.densenet121.{k}": v for k, v in state.items() if "num_batches_tracked" not in k
    }
    wrapped["module.densenet121.classifier.0.weight"] = torch.randn(14, 1024)
    wrapped["module.densenet121.classifier.0.bias"] = torch.randn(14)
    checkpoint = {"epoch": 7, "arch": "densenet121", "state_dict": wrapped, "best_loss": 0.1}
    torch.save(checkpoint, tmp_path / "model.pth.tar")
    _assert_loads_to_same_outputs(tmp_path / "model.pth.tar", densenet_reference)


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
    state["conv1.weight"] = _split_rgb(state["conv1.weight"])
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
