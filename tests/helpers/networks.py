"""Backbones for tests: which are large (built in integration/ only), and the embedding check
every backbone passes."""

from __future__ import annotations

import torch

from cxr_triage.models.networks import Backbone, build_backbone

# Tens of MB each, seconds to build on a busy 2-core machine: integration/test_networks_large.py.
LARGE_ARCHITECTURES = ("densenet121", "efficientnet-b0", "resnet50")


def assert_embeds_grey_images(arch: str) -> None:
    """``build_backbone(arch)`` embeds two 1-channel 32x32 images to finite (2, embedding_dim)."""
    torch.manual_seed(0)
    backbone = build_backbone(arch).eval()
    with torch.inference_mode():
        out = backbone.embed(torch.randn(2, 1, 32, 32))
    assert isinstance(backbone, Backbone)
    assert out.shape == (2, backbone.embedding_dim)
    assert backbone.arch == arch
    assert torch.isfinite(out).all()
