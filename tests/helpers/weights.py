"""Our networks' state dicts in the layouts published checkpoints use (torchvision, CheXNet)."""

from __future__ import annotations

import re

import torch

MONAI_DENSE = re.compile(r"^(.*denselayer\d+)\.layers\.(.+)$")


def split_rgb(weight: torch.Tensor) -> torch.Tensor:
    """Three RGB slices that sum back to ``weight`` exactly (w/3 alone is not exact in float)."""
    third = weight / 3
    return torch.cat([third, third, weight - 2 * third], dim=1)


def to_torchvision(state: dict[str, torch.Tensor], old_style: bool) -> dict[str, torch.Tensor]:
    """Our (MONAI-named) DenseNet state dict in torchvision's key names, RGB first conv; with
    ``old_style`` the pre-0.4 names (``norm.1``) that CheXNet checkpoints carry."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = MONAI_DENSE.sub(r"\1.\2", key)
        if old_style:
            key = re.sub(r"\.(norm|relu|conv)([12])\.", r".\1.\2.", key)
        if key == "features.conv0.weight":
            value = split_rgb(value)
        out[key] = value.clone()
    return out
