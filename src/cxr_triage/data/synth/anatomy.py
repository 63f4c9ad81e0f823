"""Normal anatomy as a density map: body, lungs, heart, mediastinum, ribs, clavicles, markings.

Coordinates are normalised (half the image height = 1, y down, x = 0 at the midline) in a frame
jittered per image (rotation, translation, scale). Densities are attenuation along the ray in
arbitrary units: soft tissue about 0.6 through the thickest body, a full-thickness lung removes
:data:`LUNG_AIR`. Demographics act here: sex on body width and breast shadows, age on heart size,
rib density and lung markings; AP views magnify the heart and breathe less deeply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxr_triage.data.synth import portable
from cxr_triage.data.synth.cohort import ImageSpec
from cxr_triage.data.synth.config import SynthConfig
from cxr_triage.data.synth.fields import ramp, smooth_field

__all__ = [
    "LUNG_AIR",
    "Anatomy",
    "Frame",
    "Lungs",
    "add_clavicles",
    "add_mediastinum",
    "add_ribs",
    "body_density",
    "draw_anatomy",
    "draw_lungs",
    "heart_mask",
    "lung_markings",
    "pose_frame",
]

LUNG_AIR = 0.34  # density removed by a full-thickness lung (soft tissue is about 0.6)


@dataclass(frozen=True)
class Anatomy:
    """One patient's body habitus at one examination (normalised coordinates, y down)."""

    body_width: float
    lung_x: float
    lung_a: float
    apex: float
    dome: tuple[float, float]
    dome_height: tuple[float, float]
    heart: tuple[
        float, float, float, float, float
    ]  # centre x, centre y, half-width, half-height, tilt
    rib_density: float
    marking_density: float
    breast: float
    clavicle_y: float


@dataclass(frozen=True)
class Frame:
    """Per-pixel body coordinates of one image (float32 arrays of shape ``(rows, cols)``)."""

    rows: int
    cols: int
    X: np.ndarray  # across, 0 at the midline, image right positive
    Y: np.ndarray  # down, 0 about mid-thorax
    U: np.ndarray  # |X|


@dataclass(frozen=True)
class Lungs:
    """Both lung fields: per side (-1, +1) the normalised radius and the soft mask."""

    lung: np.ndarray  # both masks added
    air_depth: np.ndarray  # air thickness, thickest in the middle of each lung
    radius: dict[int, np.ndarray]
    mask: dict[int, np.ndarray]


def draw_anatomy(spec: ImageSpec, config: SynthConfig, rng: np.random.Generator) -> Anatomy:
    """Draw the patient's normal anatomy (shared by follow-ups), this image's breathing and view.

    Findings that change the anatomy (cardiomegaly, emphysema) are applied afterwards by
    :func:`cxr_triage.data.synth.lesions.reshape_anatomy`.
    """
    prng = np.random.default_rng(list(spec.anatomy_seed))
    av = config.anatomy_variation
    male = spec.sex == "M"
    age = (spec.age - 52) / 20
    body_width = (0.80 if male else 0.74) * (1 + 0.04 * av * prng.standard_normal())
    width_ratio = body_width / 0.78
    lung_a = 0.30 * width_ratio * (1 + 0.05 * av * prng.standard_normal())
    dome = 0.43 + 0.035 * av * prng.standard_normal()
    heart_a = 0.29 * width_ratio * (1 + 0.07 * av * prng.standard_normal() + 0.04 * age)
    heart_b = 0.2 * (1 + 0.06 * av * prng.standard_normal() + 0.02 * age)
    breast = 0.0 if male else 0.07 * max(0.2, 1 + 0.35 * av * prng.standard_normal())
    rib = 0.09 * (1 - 0.12 * age) * (1 + 0.1 * av * prng.standard_normal())
    markings = 0.09 * (1 + 0.1 * age) * (1 + 0.15 * av * prng.standard_normal())
    # Per image: depth of inspiration; AP (supine, portable) views magnify the heart, breathe less
    # deeply and project the clavicles higher.
    dome += 0.025 * av * rng.standard_normal()
    clavicle_y = -0.74
    if spec.view == "AP":
        heart_a *= 1.12
        heart_b *= 1.05
        dome -= 0.05
        clavicle_y -= 0.06
    return Anatomy(
        body_width=body_width,
        lung_x=0.37 * width_ratio,
        lung_a=lung_a,
        apex=-0.72 + 0.02 * av * prng.standard_normal(),
        # Image left is the patient's right (PA convention): the right dome sits higher.
        dome=(dome - 0.035, dome),
        dome_height=(0.13, 0.11),
        heart=(0.07, dome - 0.3, heart_a, heart_b, 0.3),
        rib_density=rib,
        marking_density=markings,
        breast=breast,
        clavicle_y=clavicle_y,
    )


def pose_frame(spec: ImageSpec, config: SynthConfig, rng: np.random.Generator) -> Frame:
    """Body coordinates of every pixel after this image's rotation, scale and translation."""
    rows, cols = spec.rows, spec.cols
    pj = config.pose_jitter
    theta = math.radians(3.0 * pj * float(rng.standard_normal()))
    scale = 1 + 0.04 * pj * float(rng.standard_normal())
    tx, ty = (float(v) for v in 0.03 * pj * rng.standard_normal(2))
    half = rows / 2
    y0 = ((np.arange(rows, dtype=np.float32) + 0.5 - rows / 2) / half)[:, None]
    x0 = ((np.arange(cols, dtype=np.float32) + 0.5 - cols / 2) / half)[None, :]
    c, s = float(portable.cos(theta)) / scale, float(portable.sin(theta)) / scale
    X = c * (x0 - tx) + s * (y0 - ty)
    Y = -s * (x0 - tx) + c * (y0 - ty + 0.04)
    return Frame(rows=rows, cols=cols, X=X, Y=Y, U=np.abs(X))


def body_density(frame: Frame, anat: Anatomy) -> np.ndarray:
    """Soft tissue: a cylinder narrowing to the neck above the shoulders, plus breast shadows."""
    X, Y, U = frame.X, frame.Y, frame.U
    width = anat.body_width * (0.5 + 0.5 * ramp(Y + 0.8, 0.25))
    rel = np.minimum(U / width, 1.0)
    density = 0.6 * np.sqrt(1.0 - rel * rel) * ramp(1.0 - rel, 0.04)
    if anat.breast > 0:
        for side in (-1, 1):
            r2 = ((X - side * 0.42 * anat.body_width / 0.74) / 0.3) ** 2 + ((Y - 0.42) / 0.22) ** 2
            density += anat.breast * ramp(1.0 - r2, 0.35) * ramp(0.62 - Y, 0.04)
    return density


def draw_lungs(frame: Frame, anat: Anatomy) -> Lungs:
    """Egg-shaped lungs, narrow at the apex, cut below by the diaphragm domes."""
    X, Y = frame.X, frame.Y
    lung = np.zeros((frame.rows, frame.cols), dtype=np.float32)
    air_depth = np.zeros((frame.rows, frame.cols), dtype=np.float32)
    radius: dict[int, np.ndarray] = {}
    masks: dict[int, np.ndarray] = {}
    for k, side in enumerate((-1, 1)):
        dome, dome_h = anat.dome[k], anat.dome_height[k]
        a = anat.lung_a * (1.05 if side == -1 else 0.95)
        b = (dome - anat.apex) / 2 + 0.05
        cy = (dome + anat.apex) / 2 + 0.04
        t = np.clip((Y - anat.apex) / (dome - anat.apex), 0.0, 1.0)
        aw = a * (0.6 + 0.4 * np.sqrt(t))
        cx = side * anat.lung_x * (0.85 + 0.15 * t)
        r = np.sqrt(((X - cx) / aw) ** 2 + ((Y - cy) / b) ** 2)
        q = np.clip((X - side * anat.lung_x) / (1.15 * a), -1.0, 1.0)
        dome_y = dome - dome_h * (1.0 - q * q)
        mask = ramp(1.0 - r, 0.05) * ramp(dome_y - Y, 0.02)
        radius[side], masks[side] = r, mask
        lung += mask
        # Air is thickest in the middle of the lung, so lungs darken towards their centre.
        air_depth += mask * (0.45 + 0.55 * np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0)))
    return Lungs(lung=lung, air_depth=air_depth, radius=radius, mask=masks)


def heart_mask(frame: Frame, anat: Anatomy) -> np.ndarray:
    """Soft mask of the heart: a tilted ellipse left of the midline (0 outside, 1 inside)."""
    hx, hy, ha, hb, tilt = anat.heart
    ct, st = float(portable.cos(tilt)), float(portable.sin(tilt))
    dx, dy = frame.X - hx, frame.Y - hy
    hr = np.sqrt(((ct * dx + st * dy) / ha) ** 2 + ((-st * dx + ct * dy) / hb) ** 2)
    return ramp(1.0 - hr, 0.08)


def lung_markings(
    spec: ImageSpec,
    frame: Frame,
    anat: Anatomy,
    lungs: Lungs,
    heart: np.ndarray,
    gain: float,
    no_markings: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Vascular markings: a patient-fixed plus a per-image texture, densest near the hila."""
    rows, cols, Y, U = frame.rows, frame.cols, frame.Y, frame.U
    mrng = np.random.default_rng([*spec.anatomy_seed, 7])
    field = smooth_field(mrng, rows, cols, 30) + 0.5 * smooth_field(rng, rows, cols, 60)
    hilum = portable.exp(-(((U - 0.17) ** 2) / 0.12 + ((Y - 0.02) ** 2) / 0.25))
    vessels = ramp(0.35 - np.abs(field), 0.3) * (0.2 + hilum)
    markings = anat.marking_density * gain * vessels * lungs.lung * (1.0 - no_markings)
    markings *= 1.0 - heart
    return markings


def add_mediastinum(
    density: np.ndarray, frame: Frame, anat: Anatomy, heart: np.ndarray
) -> np.ndarray:
    """Mediastinum, trachea (lucent), spine, aortic knob and heart, added to ``density``."""
    X, Y, U = frame.X, frame.Y, frame.U
    hy = anat.heart[1]
    mw = 0.11 + 0.05 * ramp(Y + 0.2, 0.6)
    density += 0.06 * ramp(mw - np.abs(X - 0.02), 0.04) * ramp(hy - Y, 0.2)
    density -= 0.07 * ramp(0.028 - np.abs(X), 0.012) * ramp(-0.4 - Y, 0.08)
    density += 0.1 * ramp(0.065 - U, 0.02) * (0.85 + 0.15 * portable.cos(Y * (2 * math.pi / 0.09)))
    knob = ((X - 0.1) ** 2 + (Y + 0.27) ** 2) / 0.055**2
    density += 0.12 * ramp(1.0 - knob, 0.4)
    density += 0.04 * heart
    return density


def add_ribs(density: np.ndarray, frame: Frame, anat: Anatomy) -> np.ndarray:
    """Posterior arcs curving down laterally, fainter anterior ribs sloping down medially."""
    Y, U = frame.Y, frame.U
    inside = ramp(anat.body_width * 0.93 - U, 0.04)
    phase = np.clip((Y + 0.2 * U - 0.62 * U * U + 0.83) / 1.45, 0.0, 1.0)
    ribs = 0.5 + 0.5 * portable.cos(2 * math.pi * 9.0 * (phase + 0.22 * phase * phase))
    ribs = ribs * ribs
    ribs = ribs * ribs * ribs * ramp(0.98 - phase, 0.04)  # cos**6: narrow bright bands
    phase_a = np.clip((Y + 0.35 * U + 0.55) / 1.3, 0.0, 1.0)
    anterior = 0.5 + 0.5 * portable.cos(2 * math.pi * 6.0 * phase_a)
    ribs += 0.45 * anterior * anterior * anterior * ramp(0.95 - phase_a, 0.05)
    above_domes = ramp(anat.dome[1] + 0.05 - Y, 0.2)
    density += anat.rib_density * ribs * inside * ramp(U - 0.07, 0.03) * (0.4 + 0.6 * above_domes)
    return density


def add_clavicles(density: np.ndarray, frame: Frame, anat: Anatomy) -> np.ndarray:
    """Both clavicles: bright bands rising laterally from the sternal ends."""
    Y, U = frame.Y, frame.U
    clavicle = anat.clavicle_y - 0.2 * (U - 0.06) + 0.1 * (U - 0.06) ** 2
    density += (
        0.14 * ramp(0.03 - np.abs(Y - clavicle), 0.02) * ramp(U - 0.06, 0.03) * ramp(0.6 - U, 0.05)
    )
    return density
