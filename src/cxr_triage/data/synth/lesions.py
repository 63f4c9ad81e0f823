"""Findings drawn into the density map, each by its own small function.

In-lung findings (nodule, mass, consolidation, pneumonia, infiltration, effusion, atelectasis,
edema, fibrosis, pleural thickening) replace a fraction of lung air (:func:`lesion_opacity`).
The others act elsewhere: cardiomegaly enlarges the heart and emphysema hyperinflates the lungs
(:func:`reshape_anatomy`, and :func:`emphysema_gains` for the lungs' air and markings),
pneumothorax adds a lucent rim (:func:`add_pneumothorax`), hernia a retrocardiac density
(:func:`add_hernia`). :data:`DRAWN_BY` names where each of the 14 findings is drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from cxr_triage.data.synth import portable
from cxr_triage.data.synth.anatomy import LUNG_AIR, Anatomy, Frame, Lungs
from cxr_triage.data.synth.cohort import Lesion
from cxr_triage.data.synth.fields import ramp, smooth_field

__all__ = [
    "DRAWN_BY",
    "NOMINAL_CONTRAST",
    "add_hernia",
    "add_pneumothorax",
    "emphysema_gains",
    "LesionBox",
    "lesion_boxes",
    "lesion_opacity",
    "reshape_anatomy",
]

# Nominal strength of each finding at contrast multiplier 1. In-lung findings are the fraction of
# lung air they replace; Cardiomegaly is a relative heart enlargement; Pneumothorax and
# Emphysema the relative extra lucency; Hernia an added density.
NOMINAL_CONTRAST = {
    "Atelectasis": 0.55,
    "Cardiomegaly": 0.35,
    "Effusion": 0.8,
    "Infiltration": 0.4,
    "Mass": 0.75,
    "Nodule": 0.7,
    "Pneumonia": 0.55,
    "Pneumothorax": 1.0,
    "Consolidation": 0.7,
    "Edema": 0.45,
    "Emphysema": 1.0,
    "Fibrosis": 0.3,
    "Pleural_Thickening": 0.6,
    "Hernia": 0.2,
}


def _lesion_center(les: Lesion, anat: Anatomy) -> tuple[float, float]:
    """Lesion centre in image coordinates from its lung-local position."""
    k = 0 if les.side == -1 else 1
    cy = anat.apex + (anat.dome[k] - anat.apex) * (0.5 + 0.45 * les.w)
    cx = les.side * (anat.lung_x + 0.75 * anat.lung_a * les.u)
    return cx, min(cy, anat.dome[k] - anat.dome_height[k] - 0.04)


class _Site:
    """Where one in-lung lesion is drawn: its centre, its lung and the image's geometry."""

    def __init__(
        self, les: Lesion, frame: Frame, anat: Anatomy, lungs: Lungs, rng: np.random.Generator
    ) -> None:
        self.les, self.frame, self.anat, self.lungs, self.rng = les, frame, anat, lungs, rng
        self.cx, self.cy = _lesion_center(les, anat)
        self.k = 0 if les.side == -1 else 1


def _nodule_or_mass(site: _Site, strength: float) -> np.ndarray:
    """A round (nodule) or lobulated (mass) dome of density."""
    les, X, Y = site.les, site.frame.X, site.frame.Y
    radius = (0.035 if les.kind == "Nodule" else 0.1) * les.size
    dx, dy = X - site.cx, Y - site.cy
    dist = np.sqrt(dx * dx + dy * dy) + 1e-6
    rr = dist / radius
    if les.kind == "Mass":
        # Lobulated outline, radius * (1 + 0.15 cos(3 angle + phi)), without arctan2.
        cos_t, sin_t = dx / dist, dy / dist
        cos3 = cos_t * (4 * cos_t * cos_t - 3)
        sin3 = sin_t * (3 - 4 * sin_t * sin_t)
        phi = float(site.rng.uniform(0, 2 * math.pi))
        cos_phi, sin_phi = float(portable.cos(phi)), float(portable.sin(phi))
        rr = rr / (1 + 0.15 * (cos3 * cos_phi - sin3 * sin_phi))
    return strength * np.sqrt(np.clip(1.0 - rr * rr, 0.0, 1.0)) * 1.4


_AIRSPACE = {"Consolidation": (0.16, 14), "Pneumonia": (0.15, 22), "Infiltration": (0.22, 22)}


def _airspace(site: _Site, strength: float) -> np.ndarray:
    """Consolidation, pneumonia, infiltration: a patchy oval opacity (radius, texture cells)."""
    les, frame = site.les, site.frame
    radius, cells = _AIRSPACE[les.kind]
    radius *= les.size
    rr = ((frame.X - site.cx) ** 2 + ((frame.Y - site.cy) / 1.2) ** 2) / radius**2
    patch = np.clip(0.6 + 0.7 * smooth_field(site.rng, frame.rows, frame.cols, cells), 0.0, 1.0)
    return strength * ramp(1.0 - rr, 1.2) * patch


def _effusion(site: _Site, strength: float) -> np.ndarray:
    """Fluid layers at the base and climbs the lateral wall (meniscus), blunting the angle."""
    les, anat, X, Y = site.les, site.anat, site.frame.X, site.frame.Y
    height = 0.14 * les.size
    lateral = np.clip((les.side * X - anat.lung_x) / anat.lung_a, -1.0, 1.0)
    level = anat.dome[site.k] - height + 0.08 * les.size * (1.0 - (0.5 + 0.5 * lateral) ** 2)
    return strength * ramp(Y - level, 0.08) * site.lungs.mask[les.side]


def _atelectasis(site: _Site, strength: float) -> np.ndarray:
    """A band of collapsed lung (plate atelectasis), tilted."""
    les, X, Y, cx, cy = site.les, site.frame.X, site.frame.Y, site.cx, site.cy
    angle = math.radians(float(site.rng.uniform(-30, 10)))
    length, half_width = 0.22 * les.size, 0.022 * les.size
    cos_a, sin_a = float(portable.cos(angle)), float(portable.sin(angle))
    par = (X - cx) * cos_a + (Y - cy) * sin_a * les.side
    perp = -(X - cx) * sin_a * les.side + (Y - cy) * cos_a
    band = ramp(half_width - np.abs(perp), half_width) * ramp(length / 2 - np.abs(par), 0.06)
    return strength * 1.3 * band


def _edema(site: _Site, strength: float) -> np.ndarray:
    """A perihilar (bat-wing) haze on both sides."""
    les, frame = site.les, site.frame
    U, Y = frame.U, frame.Y
    spread = (U - 0.2) ** 2 / (0.05 * les.size) + (Y - 0.08) ** 2 / (0.12 * les.size)
    haze = portable.exp(-spread)
    patch = np.clip(0.7 + 0.5 * smooth_field(site.rng, frame.rows, frame.cols, 10), 0.0, 1.0)
    return strength * haze * patch


def _fibrosis(site: _Site, strength: float) -> np.ndarray:
    """A basal, peripheral reticular net on both sides."""
    frame, anat, lungs = site.frame, site.anat, site.lungs
    net = smooth_field(site.rng, frame.rows, frame.cols, 70)
    reticular = ramp(0.3 - np.abs(net), 0.25)
    basal = ramp(frame.Y - (anat.apex + 0.6), 0.5)
    periphery = sum(ramp(lungs.radius[s] - 0.55, 0.3) for s in (-1, 1))
    return strength * 1.3 * reticular * basal * periphery


def _pleural_thickening(site: _Site, strength: float) -> np.ndarray:
    """A rim of density along the lateral chest wall of one lung."""
    les, anat, X = site.les, site.anat, site.frame.X
    thickness = 0.08 * les.size
    r = site.lungs.radius[les.side]
    rim = ramp(r - (1.0 - thickness), 0.04) * ramp(les.side * X - anat.lung_x + 0.05, 0.1)
    return strength * rim * site.lungs.mask[les.side]


_OPACITY: dict[str, Callable[[_Site, float], np.ndarray]] = {
    "Nodule": _nodule_or_mass,
    "Mass": _nodule_or_mass,
    "Consolidation": _airspace,
    "Pneumonia": _airspace,
    "Infiltration": _airspace,
    "Effusion": _effusion,
    "Atelectasis": _atelectasis,
    "Edema": _edema,
    "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening,
}
# Where each finding is drawn (a test checks that this covers the vocabulary's 14 findings).
DRAWN_BY: dict[str, str] = {
    **{kind: f"lesion_opacity ({function.__name__})" for kind, function in _OPACITY.items()},
    "Cardiomegaly": "reshape_anatomy (heart size)",
    "Emphysema": "reshape_anatomy (flat, low domes) and emphysema_gains (air, markings)",
    "Pneumothorax": "add_pneumothorax",
    "Hernia": "add_hernia",
}


def lesion_opacity(
    lesions: tuple[Lesion, ...], frame: Frame, anat: Anatomy, lungs: Lungs
) -> np.ndarray:
    """Fraction of lung air replaced by in-lung findings (0 where the lung is clear).

    Returns:
        float32 array of shape ``(rows, cols)``; values above 1 where findings overlap.
    """
    opacity = np.zeros((frame.rows, frame.cols), dtype=np.float32)
    for les in lesions:
        draw = _OPACITY.get(les.kind)
        if draw is None:
            continue
        site = _Site(les, frame, anat, lungs, np.random.default_rng(les.seed))
        opacity += draw(site, NOMINAL_CONTRAST[les.kind] * les.contrast)
    return opacity


@dataclasses.dataclass(frozen=True)
class LesionBox:
    """Where one in-lung finding was drawn: its bounding box in stored pixels (as NIH's
    ``BBox_List_2017.csv``: ``x``, ``y`` of the top-left corner, width ``w``, height ``h``)."""

    finding: str
    x: int
    y: int
    w: int
    h: int


def lesion_boxes(
    lesions: tuple[Lesion, ...], frame: Frame, anat: Anatomy, lungs: Lungs, level: float = 0.25
) -> list[LesionBox]:
    """The box of each in-lung finding: where its own opacity is at least ``level`` times its
    peak. Each is redrawn from its own seed, exactly as :func:`lesion_opacity` drew it, so
    computing boxes changes nothing in the image. Findings drawn elsewhere (cardiomegaly,
    emphysema, pneumothorax, hernia) have no box."""
    boxes = []
    for les in lesions:
        draw = _OPACITY.get(les.kind)
        if draw is None:
            continue
        site = _Site(les, frame, anat, lungs, np.random.default_rng(les.seed))
        opacity = draw(site, NOMINAL_CONTRAST[les.kind] * les.contrast)
        peak = float(opacity.max())
        if peak <= 0:
            continue
        rows, cols = np.nonzero(opacity >= level * peak)
        y0, x0 = int(rows.min()), int(cols.min())
        boxes.append(
            LesionBox(les.kind, x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1)
        )
    return boxes


def reshape_anatomy(anat: Anatomy, lesions: tuple[Lesion, ...]) -> Anatomy:
    """Enlarge the heart (cardiomegaly); lower and flatten the domes (emphysema)."""
    by_kind = {lesion.kind: lesion for lesion in lesions}
    hx, _, heart_a, heart_b, tilt = anat.heart
    dome = anat.dome[1]
    dome_height = anat.dome_height
    if "Cardiomegaly" in by_kind:
        les = by_kind["Cardiomegaly"]
        heart_a *= 1 + NOMINAL_CONTRAST["Cardiomegaly"] * les.contrast * les.size
        heart_b *= 1 + 0.4 * NOMINAL_CONTRAST["Cardiomegaly"] * les.contrast * les.size
    if "Emphysema" in by_kind:
        strength = min(1.0, by_kind["Emphysema"].contrast * by_kind["Emphysema"].size)
        dome += 0.08 * strength
        dome_height = (0.13 * (1 - 0.7 * strength), 0.11 * (1 - 0.7 * strength))
    return dataclasses.replace(
        anat,
        dome=(dome - 0.035, dome),
        dome_height=dome_height,
        heart=(hx, dome - 0.3, heart_a, heart_b, tilt),
    )


def emphysema_gains(lesions: tuple[Lesion, ...]) -> tuple[float, float]:
    """Multipliers of lung air and of vascular markings (1, 1 without emphysema)."""
    emphysema = next((les for les in lesions if les.kind == "Emphysema"), None)
    air_gain = 1.0
    marking_gain = 1.0
    if emphysema is not None:
        strength = NOMINAL_CONTRAST["Emphysema"] * emphysema.contrast
        air_gain += 0.35 * strength
        marking_gain -= 0.6 * min(1.0, strength)
    return air_gain, marking_gain


def add_pneumothorax(
    lesions: tuple[Lesion, ...],
    frame: Frame,
    lungs: Lungs,
    air: np.ndarray,
    density: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A lucent rim without markings outside a visible visceral pleural line.

    Returns:
        ``(air, density, no_markings)``: air and density with the rims added, and where the rims
        erase the lung markings (0..1).
    """
    no_markings = np.zeros((frame.rows, frame.cols), dtype=np.float32)
    for les in lesions:
        if les.kind != "Pneumothorax":
            continue
        strength = NOMINAL_CONTRAST["Pneumothorax"] * les.contrast
        edge = 1.0 - 0.22 * les.size
        r, mask = lungs.radius[les.side], lungs.mask[les.side]
        upper = ramp(0.25 - frame.Y + 0.4 * les.w, 0.3) * mask
        rim = ramp(r - edge, 0.02) * upper
        no_markings = np.maximum(no_markings, rim)
        air = air + 0.25 * strength * LUNG_AIR * rim
        density += 0.06 * strength * ramp(0.022 - np.abs(r - edge), 0.012) * upper
    return air, density, no_markings


def add_hernia(
    lesions: tuple[Lesion, ...], frame: Frame, anat: Anatomy, density: np.ndarray
) -> np.ndarray:
    """Add a retrocardiac hiatal hernia (round density with a gas cap) where labelled."""
    X, Y = frame.X, frame.Y
    for les in lesions:
        if les.kind != "Hernia":
            continue
        strength = NOMINAL_CONTRAST["Hernia"] * les.contrast
        radius = 0.09 * les.size
        cy = anat.dome[1] - anat.dome_height[1] - 0.05
        rr = ((X - 0.04) ** 2 + (Y - cy) ** 2) / radius**2
        blob = ramp(1.0 - rr, 0.3)
        gas = ramp(cy - radius * 0.3 - Y, 0.02)
        density = density + strength * blob * (1.0 - 1.8 * gas)
    return density
