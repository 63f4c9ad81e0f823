"""Published DenseNet-121 checkpoints (torchvision .pth, safetensors, CheXNet) load into our
backbone with the same outputs. Builds full DenseNet-121s (seconds each): integration, not unit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cxr_triage.models.networks import build_backbone
from cxr_triage.models.weights import load_backbone_weights
from helpers.weights import to_torchvision

pytestmark = pytest.mark.integration


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
    state = to_torchvision(densenet_reference[0].net.state_dict(), old_style=False)
    assert "features.denseblock1.denselayer1.norm1.weight" in state
    state["classifier.weight"] = torch.randn(1000, 1024)
    state["classifier.bias"] = torch.randn(1000)
    torch.save(state, tmp_path / "densenet121.pth")
    _assert_loads_to_same_outputs(tmp_path / "densenet121.pth", densenet_reference)


def test_load_torchvision_densenet_safetensors(tmp_path: Path, densenet_reference: tuple) -> None:
    state = to_torchvision(densenet_reference[0].net.state_dict(), old_style=False)
    state["classifier.weight"] = torch.randn(1000, 1024)
    state["classifier.bias"] = torch.randn(1000)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "densenet.safetensors")
    _assert_loads_to_same_outputs(tmp_path / "densenet.safetensors", densenet_reference)


def test_load_chexnet_style_checkpoint(tmp_path: Path, densenet_reference: tuple) -> None:
    state = to_torchvision(densenet_reference[0].net.state_dict(), old_style=True)
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
