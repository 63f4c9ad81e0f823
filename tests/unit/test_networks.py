from __future__ import annotations

import pytest
import torch

from cxr_triage.errors import ConfigError
from cxr_triage.models.networks import ARCHITECTURES, Classifier, build_backbone
from helpers.networks import LARGE_ARCHITECTURES, assert_embeds_grey_images


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a not in LARGE_ARCHITECTURES])
def test_build_backbone_embeds_grey_images(arch: str) -> None:
    assert_embeds_grey_images(arch)  # the large ones: integration/test_networks_large.py


def test_build_backbone_unknown_arch_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="densenet121.*small_cnn"):
        build_backbone("vit_b16")


def test_build_backbone_accepts_three_channels() -> None:
    backbone = build_backbone("small_cnn", in_channels=3).eval()
    assert backbone(torch.zeros(1, 3, 32, 32)).shape == (1, backbone.embedding_dim)


def test_small_cnn_embedding_size_fits_demos() -> None:
    backbone = build_backbone("small_cnn")
    assert 128 <= backbone.embedding_dim <= 256
    assert sum(p.numel() for p in backbone.parameters()) < 2_000_000


@pytest.mark.parametrize("n_outputs", [1, 14])
def test_classifier_returns_logits_per_output(n_outputs: int) -> None:
    model = Classifier(build_backbone("small_cnn"), n_outputs).eval()
    assert model(torch.zeros(3, 1, 32, 32)).shape == (3, n_outputs)
    assert model.n_outputs == n_outputs


def test_classifier_rejects_zero_outputs() -> None:
    with pytest.raises(ConfigError, match="n_outputs"):
        Classifier(build_backbone("small_cnn"), 0)
