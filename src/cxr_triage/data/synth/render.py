"""Rendering one image: anatomy and findings as a density map, then the site's acquisition."""

from __future__ import annotations

import numpy as np

from cxr_triage.data.synth import anatomy, lesions
from cxr_triage.data.synth.acquisition import acquire
from cxr_triage.data.synth.cohort import ImageSpec
from cxr_triage.data.synth.config import SynthConfig
from cxr_triage.data.synth.sites import SiteProfile

__all__ = ["render_density", "render_image", "render_image_with_boxes"]


def render_density(spec: ImageSpec, config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Density map (attenuation, arbitrary units) of one image, findings included.

    Returns:
        float32 array of shape ``(spec.rows, spec.cols)``.
    """
    return _render(spec, config, rng)[0]


def _render(
    spec: ImageSpec, config: SynthConfig, rng: np.random.Generator
) -> tuple[np.ndarray, anatomy.Frame, anatomy.Anatomy, anatomy.Lungs]:
    """The density map and the geometry it was drawn in (for the findings' boxes)."""
    found = spec.lesions
    anat = lesions.reshape_anatomy(anatomy.draw_anatomy(spec, config, rng), found)
    frame = anatomy.pose_frame(spec, config, rng)
    density = anatomy.body_density(frame, anat)
    air_gain, marking_gain = lesions.emphysema_gains(found)
    lungs = anatomy.draw_lungs(frame, anat)
    heart = anatomy.heart_mask(frame, anat)
    air = anatomy.LUNG_AIR * air_gain * lungs.air_depth * (1.0 - 0.85 * heart)
    air, density, no_markings = lesions.add_pneumothorax(found, frame, lungs, air, density)
    markings = anatomy.lung_markings(spec, frame, anat, lungs, heart, marking_gain, no_markings,
                                     rng)  # fmt: skip
    density = anatomy.add_mediastinum(density, frame, anat, heart)
    density = anatomy.add_ribs(density, frame, anat)
    density = anatomy.add_clavicles(density, frame, anat)
    opacity = lesions.lesion_opacity(found, frame, anat, lungs)
    if any(les.kind in ("Edema", "Effusion") for les in found):
        # Fluid also thickens the soft tissue a little (vascular redistribution, hazy outlines).
        density += 0.02 * lungs.lung
    density = density - air + air * np.minimum(opacity, 1.0) + markings
    return lesions.add_hernia(found, frame, anat, density), frame, anat, lungs


def render_image(spec: ImageSpec, site: SiteProfile, config: SynthConfig) -> np.ndarray:
    """Stored pixel values of one image (uint16, ``(spec.rows, spec.cols)``)."""
    rng = np.random.default_rng(list(spec.image_seed))
    return acquire(render_density(spec, config, rng), site, spec, rng)


def render_image_with_boxes(
    spec: ImageSpec, site: SiteProfile, config: SynthConfig
) -> tuple[np.ndarray, list[lesions.LesionBox]]:
    """:func:`render_image`'s pixels (the same values) and the box of each in-lung finding."""
    rng = np.random.default_rng(list(spec.image_seed))
    density, frame, anat, lungs = _render(spec, config, rng)
    pixels = acquire(density, site, spec, rng)
    return pixels, lesions.lesion_boxes(spec.lesions, frame, anat, lungs)
