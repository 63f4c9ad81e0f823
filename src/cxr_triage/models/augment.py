"""Train-time random transforms for chest radiographs (training only, never inference).

Geometric: small rotation, translation and scale, as one affine resampling per batch
(``grid_sample`` with border padding, so no black corners that a model could key on).
Photometric: brightness, contrast and gamma, applied in ``[0, 1]`` intensity space.

No horizontal flip by default: the heart lies on the patient's left and cardiomegaly,
dextrocardia and situs findings depend on that side, so a flipped radiograph is not a plausible
image of the same class. Enable ``hflip_p`` only for tasks known to be side-agnostic.

All randomness comes from the ``torch.Generator`` passed in, so a seed gives identical batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from cxr_triage.config import AugmentOptions
from cxr_triage.data.preprocess import MODEL_INPUT_MEAN, MODEL_INPUT_STD
from cxr_triage.errors import ConfigError

__all__ = ["AugmentOptions", "augment_batch"]


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    options: AugmentOptions | None = None,
) -> torch.Tensor:
    """Randomly transform a batch of images.

    Args:
        x: ``uint8`` images ``(B, S, S)`` or ``(B, 1, S, S)``, or normalised float32 model
            input ``(B, 1, S, S)`` (see :func:`~cxr_triage.data.preprocess.to_model_input`).
        generator: CPU generator all random draws come from.
        options: transform ranges; the defaults when None.

    Returns:
        Normalised float32 ``(B, 1, S, S)`` on the device of ``x``.

    Raises:
        ConfigError: if ``x`` has an unexpected shape.
    """
    options = options or AugmentOptions()
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x[:, None]
        unit = x.float() / 255.0
    else:
        unit = x.float() * MODEL_INPUT_STD + MODEL_INPUT_MEAN
    if unit.ndim != 4 or unit.shape[1] != 1:
        raise ConfigError(f"augment_batch expects (B, 1, S, S) images, got {tuple(x.shape)}")
    n, device = unit.shape[0], unit.device

    # Draw every parameter on the CPU generator so results do not depend on the device.
    angle = _uniform(n, -options.max_rotation_deg, options.max_rotation_deg, generator)
    angle = angle * (math.pi / 180.0)
    scale = _uniform(n, *options.scale_range, generator)
    shift = _uniform(2 * n, -options.max_translation, options.max_translation, generator)
    flip = torch.rand(n, generator=generator) < options.hflip_p
    brightness = _uniform(n, -options.brightness, options.brightness, generator)
    contrast = _uniform(n, 1.0 - options.contrast, 1.0 + options.contrast, generator)
    gamma = _uniform(n, *options.gamma_range, generator)

    # affine_grid maps output to input coordinates in [-1, 1]: dividing by scale zooms in.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sign = torch.where(flip, -1.0, 1.0)
    theta = torch.stack(
        [
            torch.stack([cos * sign, -sin, 2 * shift[:n]], dim=1),
            torch.stack([sin * sign, cos, 2 * shift[n:]], dim=1),
        ],
        dim=1,
    ).to(device)
    grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
    out = F.grid_sample(unit, grid, mode="bilinear", padding_mode="border", align_corners=False)

    out = out.clamp(0.0, 1.0).pow(gamma.to(device).view(n, 1, 1, 1))
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.to(device).view(n, 1, 1, 1) + mean
    out = (out + brightness.to(device).view(n, 1, 1, 1)).clamp(0.0, 1.0)
    return (out - MODEL_INPUT_MEAN) / MODEL_INPUT_STD
