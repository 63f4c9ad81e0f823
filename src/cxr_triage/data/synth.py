"""Synthetic chest radiographs: the project's embedded default dataset (a stand-in for real data).

:func:`generate_dataset` writes ``<out_dir>/images/*.dcm`` (DX or CR DICOM with fake but
realistic-looking PHI, so that de-identification has something to remove) and
``<out_dir>/labels.csv`` in the NIH ChestX-ray14 ``Data_Entry_2017.csv`` format plus a ``Site``
column. Everything is a pure function of ``(n, site, seed, config)``: the same arguments give
byte-identical files.

How an image is made (numpy only, vectorised):

1. A density map (attenuation along the ray, arbitrary units) is built from smooth shapes in a
   coordinate frame jittered per image (rotation, translation, scale): a body with a cylindrical
   thickness profile, two air-filled lungs with vascular markings, heart, mediastinum and spine,
   diaphragm domes, posterior and anterior ribs, clavicles, breast shadows for female patients.
2. Findings add (or, for pneumothorax and emphysema, remove) density with a size and contrast
   drawn per finding; a configurable fraction of abnormal images is drawn subtle.
3. The site's acquisition turns density into stored values: exposure, contrast (gamma), a smooth
   background (heel effect), blur, signal-dependent quantum noise, bit depth and photometric
   interpretation (MONOCHROME1 stores the inverse: lungs high, bone low).

Demographics act on both anatomy (thorax and heart size, breast shadows, rib density, lung
markings) and prevalence (older and male patients are a little more often abnormal), and AP views
are more frequent among abnormal images, as in real data; fairness and shortcut analyses therefore
have something to find. Nothing here is medical ground truth.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from cxr_triage.atomic import atomic_dir
from cxr_triage.errors import ConfigError
from cxr_triage.vocabulary import FINDINGS, NO_FINDING

__all__ = [
    "LABEL_COLUMNS",
    "SITE_PRESETS",
    "SiteProfile",
    "SynthConfig",
    "generate_dataset",
    "site_profile",
]

logger = logging.getLogger(__name__)


# Columns as pandas reads Data_Entry_2017.csv: its header "OriginalImage[Width,Height]" holds an
# unquoted comma, so one header name spans two value columns (and the same for the spacing).
LABEL_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
    "Site",
)

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage

# Relative label frequencies in ChestX-ray14 (images per finding), so that label mixes look real.
_FINDING_WEIGHTS = {
    "Atelectasis": 11559,
    "Cardiomegaly": 2776,
    "Effusion": 13317,
    "Infiltration": 19894,
    "Mass": 5782,
    "Nodule": 6331,
    "Pneumonia": 1431,
    "Pneumothorax": 5302,
    "Consolidation": 4667,
    "Edema": 2303,
    "Emphysema": 2516,
    "Fibrosis": 1686,
    "Pleural_Thickening": 3385,
    "Hernia": 227,
}
# Chronic findings persist across a patient's follow-ups (same place, same size).
_CHRONIC = frozenset(
    {"Cardiomegaly", "Emphysema", "Fibrosis", "Mass", "Nodule", "Pleural_Thickening", "Hernia"}
)
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")

# Fake PHI sources: ordinary names, so that de-identification is exercised on realistic strings.
_FAMILY = (
    "Doe", "Smith", "Garcia", "Nguyen", "Kowalski", "Okafor", "Rossi", "Jensen", "Tanaka",
    "Moreau", "Silva", "Novak", "Murphy", "Haddad", "Larsen", "Fischer", "Ivanova", "Khan",
)  # fmt: skip
_GIVEN_F = (
    "Jane", "Maria", "Aiko", "Fatima", "Olga", "Chloe", "Ingrid", "Priya", "Grace", "Lucia",
)  # fmt: skip
_GIVEN_M = (
    "John", "Ahmed", "Kenji", "Pedro", "Lars", "Tomasz", "David", "Omar", "Luca", "Samuel",
)  # fmt: skip
_STAFF = ("House^Gregory^^Dr", "Quinn^Michaela^^Dr", "Kildare^James^^Dr", "Yang^Cristina^^Dr")
_OPERATORS = ("Tech^Alex", "Tech^Robin", "Tech^Sam", "Tech^Jordan")
_STREETS = ("Elm Street", "Harbour Road", "Mill Lane", "Station Avenue", "Church Road")


@dataclass(frozen=True)
class SiteProfile:
    """How one (fictional) hospital acquires and stores chest radiographs.

    Args:
        name: site name; used in file names, ``StationName`` and the ``Site`` column.
        manufacturer: DICOM ``Manufacturer``.
        model_name: DICOM ``ManufacturerModelName``.
        institution: DICOM ``InstitutionName`` (fake PHI).
        modality: ``"DX"`` or ``"CR"``; also picks the SOP class.
        photometric: ``"MONOCHROME2"`` (high = bright) or ``"MONOCHROME1"`` (stored inverted).
        bits_stored: 10 to 16; stored values use most of ``[0, 2**bits_stored - 1]``.
        rows: native image height in pixels.
        cols: native image width in pixels.
        pixel_spacing: native pixel size in mm (scaled when the size is overridden).
        exposure: relative dose, 1 nominal; higher burns through (darker lungs, flatter
            contrast) with less noise, lower is noisier.
        contrast: gamma of the processing curve; above 1 darkens mid-tones and stretches the
            bright end.
        noise: standard deviation of quantum noise on the [0, 1] display scale at exposure 1.
        blur: Gaussian sigma of the detector's blur, in native pixels.
        abnormal_prevalence: fraction of abnormal images for a 52-year-old (age and sex shift it).
        ap_rate: fraction of AP views among normal images (abnormal images get about twice).
        rescale_slope: DICOM ``RescaleSlope``.
        rescale_intercept: DICOM ``RescaleIntercept``.
    """

    name: str
    manufacturer: str
    model_name: str
    institution: str
    modality: str
    photometric: str
    bits_stored: int
    rows: int
    cols: int
    pixel_spacing: float
    exposure: float
    contrast: float
    noise: float
    blur: float
    abnormal_prevalence: float
    ap_rate: float = 0.2
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0

    def __post_init__(self) -> None:
        if not _SITE_NAME.match(self.name):
            raise ConfigError(
                f"site name {self.name!r} must be 1-40 letters, digits, '_' or '-' "
                "(it becomes part of every file name)"
            )
        if self.modality not in ("DX", "CR"):
            raise ConfigError(
                f"site {self.name}: modality must be DX or CR, got {self.modality!r}"
            )
        if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ConfigError(
                f"site {self.name}: photometric must be MONOCHROME1 or MONOCHROME2, "
                f"got {self.photometric!r}"
            )
        if not 8 <= self.bits_stored <= 16:
            raise ConfigError(
                f"site {self.name}: bits_stored must be 8..16, got {self.bits_stored}"
            )
        if not (32 <= self.rows <= 4096 and 32 <= self.cols <= 4096):
            raise ConfigError(
                f"site {self.name}: rows/cols must be 32..4096, got {self.rows}x{self.cols}"
            )
        for key in ("pixel_spacing", "exposure", "contrast", "rescale_slope"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"site {self.name}: {key} must be > 0")
        if self.noise < 0 or self.blur < 0:
            raise ConfigError(f"site {self.name}: noise and blur must be >= 0")
        for key in ("abnormal_prevalence", "ap_rate"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"site {self.name}: {key} must be in [0, 1]")

    @property
    def sop_class_uid(self) -> str:
        """DICOM SOP class for this site's modality."""
        return DX_SOP_CLASS if self.modality == "DX" else CR_SOP_CLASS


SITE_PRESETS: dict[str, SiteProfile] = {
    # The three training sites: plausible, mutually different acquisitions.
    "hospital_a": SiteProfile(
        name="hospital_a",
        manufacturer="Northwind Medical Systems",
        model_name="NW-DR 3000",
        institution="Saint Alderney General Hospital",
        modality="DX",
        photometric="MONOCHROME2",
        bits_stored=12,
        rows=512,
        cols=512,
        pixel_spacing=0.80,
        exposure=1.0,
        contrast=1.0,
        noise=0.015,
        blur=0.6,
        abnormal_prevalence=0.5,
        ap_rate=0.2,
    ),
    "hospital_b": SiteProfile(
        name="hospital_b",
        manufacturer="Helios Radiography",
        model_name="Helios FlatPanel X2",
        institution="Riverside University Medical Centre",
        modality="DX",
        photometric="MONOCHROME2",
        bits_stored=14,
        rows=576,
        cols=512,
        pixel_spacing=0.74,
        exposure=1.15,
        contrast=0.85,
        noise=0.012,
        blur=0.8,
        abnormal_prevalence=0.45,
        ap_rate=0.15,
    ),
    "hospital_c": SiteProfile(
        name="hospital_c",
        manufacturer="Meridian CR Systems",
        model_name="Meridian CR-35",
        institution="Old Harbour Community Hospital",
        modality="CR",
        photometric="MONOCHROME1",
        bits_stored=10,
        rows=608,
        cols=544,
        pixel_spacing=0.70,
        exposure=0.9,
        contrast=1.15,
        noise=0.022,
        blur=1.1,
        abnormal_prevalence=0.55,
        ap_rate=0.3,
    ),
    # A clearly shifted acquisition for drift demos: new vendor, low dose (noisy), hard contrast
    # curve, sharper and larger images, 16-bit with an offset modality LUT.
    "new_hospital": SiteProfile(
        name="new_hospital",
        manufacturer="Contoso Imaging",
        model_name="Contoso Vista 16",
        institution="New Horizons Regional Hospital",
        modality="DX",
        photometric="MONOCHROME2",
        bits_stored=16,
        rows=768,
        cols=768,
        pixel_spacing=0.55,
        exposure=0.6,
        contrast=1.6,
        noise=0.03,
        blur=0.3,
        abnormal_prevalence=0.5,
        ap_rate=0.35,
        rescale_intercept=-1024.0,
    ),
}


def site_profile(name: str) -> SiteProfile:
    """Return the preset for ``name``, or a deterministic profile derived from the name.

    Unknown names get a profile drawn from plausible ranges with a generator seeded by a hash of
    the name, so ``--site anything`` works and always gives the same acquisition.

    Args:
        name: a key of :data:`SITE_PRESETS` or any new site name (letters, digits, ``_``, ``-``).

    Returns:
        The site's profile.

    Raises:
        ConfigError: the name cannot be used in file names.
    """
    if name in SITE_PRESETS:
        return SITE_PRESETS[name]
    if not isinstance(name, str) or not _SITE_NAME.match(name):
        raise ConfigError(
            f"site name {name!r} must be 1-40 letters, digits, '_' or '-' "
            f"(presets: {', '.join(SITE_PRESETS)})"
        )
    rng = np.random.default_rng(_name_hash(name))
    modality = str(rng.choice(["DX", "CR"]))
    rows = int(rng.choice([512, 544, 576, 640]))
    cols = int(rng.choice([512, 512, 544, 576]))
    return SiteProfile(
        name=name,
        manufacturer=str(rng.choice(["Northwind Medical Systems", "Helios Radiography",
                                     "Meridian CR Systems", "Contoso Imaging", "Fabrikam DR"])),
        model_name=f"SYN-{modality}-{int(rng.integers(100, 999))}",
        institution=f"{name.replace('_', ' ').replace('-', ' ').title()} Hospital",
        modality=modality,
        photometric="MONOCHROME1" if modality == "CR" and rng.random() < 0.6 else "MONOCHROME2",
        bits_stored=int(rng.choice([10, 12, 12, 14, 16])),
        rows=rows,
        cols=cols,
        pixel_spacing=round(float(rng.uniform(380.0, 430.0)) / rows, 4),
        exposure=round(float(rng.uniform(0.75, 1.25)), 3),
        contrast=round(float(rng.uniform(0.8, 1.3)), 3),
        noise=round(float(rng.uniform(0.01, 0.03)), 4),
        blur=round(float(rng.uniform(0.3, 1.2)), 3),
        abnormal_prevalence=round(float(rng.uniform(0.35, 0.6)), 3),
        ap_rate=round(float(rng.uniform(0.1, 0.35)), 3),
    )  # fmt: skip


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty and content knobs of the generator (defaults give a realistic, imperfect task).

    Args:
        lesion_contrast: range of the per-finding contrast multiplier (1 = a clearly visible
            lesion of that kind); drawn uniformly per finding.
        lesion_size: range of the per-finding size multiplier (1 = typical size of that kind).
        subtle_fraction: fraction of abnormal images drawn subtle: every finding at
            ``subtle_scale`` times its contrast and at the smallest size of ``lesion_size``.
            These are what keeps a good model well below AUROC 1.0.
        subtle_scale: contrast multiplier of subtle findings.
        max_findings: most findings per abnormal image (1 to 14); the count is drawn with
            decreasing probability, as in ChestX-ray14.
        label_noise: fraction of images whose content disagrees with the label, as in report-mined
            labels: a labelled abnormal image drawn without visible finding, or a "No Finding"
            image with an unlabelled faint finding.
        anatomy_variation: scale of normal anatomical variability (heart and lung size and shape,
            diaphragm height, breast and rib density); 0 makes all patients alike.
        pose_jitter: scale of per-image rotation (about 3 degrees at 1), translation and scale.
        ap_abnormal_ratio: how much more often abnormal images are AP than normal ones (about 2 in
            real data); 1 removes the view shortcut.
        max_followups: most images per patient (follow-ups share sex, age, anatomy and chronic
            findings; their labels may differ).
        prevalence: abnormal fraction overriding the site's ``abnormal_prevalence``; None keeps it.
        image_size: longest side in pixels overriding the site's native size (aspect and field of
            view kept, pixel spacing scaled); None keeps the native size.
    """

    lesion_contrast: tuple[float, float] = (0.6, 1.3)
    lesion_size: tuple[float, float] = (0.6, 1.3)
    subtle_fraction: float = 0.25
    subtle_scale: float = 0.3
    max_findings: int = 3
    label_noise: float = 0.06
    anatomy_variation: float = 1.0
    pose_jitter: float = 1.0
    ap_abnormal_ratio: float = 2.0
    max_followups: int = 5
    prevalence: float | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        for key in ("lesion_contrast", "lesion_size"):
            lo, hi = getattr(self, key)
            if not 0 <= lo <= hi:
                raise ConfigError(f"synth config: {key} must be (low, high) with 0 <= low <= high")
        for key in ("subtle_fraction", "subtle_scale", "label_noise"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"synth config: {key} must be in [0, 1]")
        if self.prevalence is not None and not 0 <= self.prevalence <= 1:
            raise ConfigError("synth config: prevalence must be in [0, 1] or None")
        if not 1 <= self.max_findings <= len(FINDINGS):
            raise ConfigError(f"synth config: max_findings must be 1..{len(FINDINGS)}")
        if self.max_followups < 1:
            raise ConfigError("synth config: max_followups must be >= 1")
        if self.anatomy_variation < 0 or self.pose_jitter < 0 or self.ap_abnormal_ratio < 1:
            raise ConfigError(
                "synth config: anatomy_variation and pose_jitter must be >= 0, "
                "ap_abnormal_ratio >= 1"
            )
        if self.image_size is not None and not 32 <= self.image_size <= 4096:
            raise ConfigError("synth config: image_size must be 32..4096 or None")


# --------------------------------------------------------------------------------------------
# Planning: who is imaged, when, with what labels (cheap, sequential, in the parent process)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lesion:
    """One finding as drawn: kind, where, how big and how dense."""

    kind: str
    side: int  # -1: image left (patient's right in PA), +1: image right
    u: float  # position across the lung, -1 medial .. 1 lateral (lung-local units)
    w: float  # position down the lung, -1 apex .. 1 base
    size: float
    contrast: float
    seed: int  # shape details (lobulation, texture)


@dataclass(frozen=True)
class _ImageSpec:
    """Everything a worker needs to render and write one image."""

    index: int
    image_index: str
    patient_number: int
    followup: int
    patient_id: str
    sex: str
    age: int
    view: str
    labels: tuple[str, ...]
    lesions: tuple[_Lesion, ...]
    anatomy_seed: tuple[int, ...]
    image_seed: tuple[int, ...]
    rows: int
    cols: int
    pixel_spacing: float
    study_date: str
    phi: dict[str, str] = field(default_factory=dict)


def _name_hash(text: str) -> int:
    """Stable 63-bit integer from a string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _output_size(site: SiteProfile, config: SynthConfig) -> tuple[int, int, float]:
    """Rows, columns and pixel spacing after the optional size override."""
    if config.image_size is None:
        return site.rows, site.cols, site.pixel_spacing
    factor = config.image_size / max(site.rows, site.cols)
    rows = max(32, round(site.rows * factor))
    cols = max(32, round(site.cols * factor))
    return rows, cols, round(site.pixel_spacing * site.rows / rows, 4)


def _draw_lesion(
    kind: str, rng: np.random.Generator, config: SynthConfig, subtle: bool
) -> _Lesion:
    """Draw where and how visible one finding is."""
    lo, hi = config.lesion_contrast
    contrast = float(rng.uniform(lo, hi))
    size = float(rng.uniform(*config.lesion_size))
    if subtle:
        contrast *= config.subtle_scale
        size = config.lesion_size[0]
    # Typical locations: effusions and atelectasis basal, pneumothorax apical-lateral, edema and
    # cardiomegaly central (position unused), the rest anywhere in the lung.
    if kind in ("Effusion", "Atelectasis"):
        w = float(rng.uniform(0.3, 0.8))
    elif kind == "Pneumothorax":
        w = float(rng.uniform(-0.8, -0.2))
    elif kind in ("Consolidation", "Pneumonia"):
        w = float(rng.uniform(-0.2, 0.7))
    else:
        w = float(rng.uniform(-0.7, 0.7))
    return _Lesion(
        kind=kind,
        side=int(rng.choice([-1, 1])),
        u=float(rng.uniform(-0.5, 0.7)),
        w=w,
        size=size,
        contrast=contrast,
        seed=int(rng.integers(0, 2**31)),
    )


def _plan(n: int, site: SiteProfile, seed: int, config: SynthConfig) -> list[_ImageSpec]:
    """Assign images to patients and follow-ups and draw demographics, views and labels."""
    site_key = _name_hash(site.name)
    rows, cols, spacing = _output_size(site, config)
    base_logit = _logit(
        site.abnormal_prevalence if config.prevalence is None else config.prevalence
    )
    weights = np.array([_FINDING_WEIGHTS[f] for f in FINDINGS], dtype=float)
    count_p = np.array([0.6, 0.25, 0.1, 0.05] + [0.02] * 10)[: config.max_findings]
    count_p /= count_p.sum()
    specs: list[_ImageSpec] = []
    patient = 0
    while len(specs) < n:
        patient += 1
        prng = np.random.default_rng([seed, site_key, 1, patient])
        n_images = min(1 + int(prng.geometric(0.45)) - 1, config.max_followups, n - len(specs))
        sex = "F" if prng.random() < 0.45 else "M"
        base_age = int(np.clip(prng.normal(52, 17), 18, 92))
        # Patients differ in how sick they are; images of one patient are correlated.
        propensity = float(prng.normal(0.0, 0.6))
        # A patient's possible findings; each abnormal follow-up shows a subset of them.
        n_patient_findings = int(prng.choice(np.arange(1, config.max_findings + 1), p=count_p))
        patient_findings = [
            str(f)
            for f in prng.choice(
                FINDINGS, size=n_patient_findings, replace=False, p=weights / weights.sum()
            )
        ]
        if base_age > 60 and prng.random() < 0.15 and "Cardiomegaly" not in patient_findings:
            patient_findings[-1] = "Cardiomegaly"
        family, given = (
            str(prng.choice(_FAMILY)),
            str(prng.choice(_GIVEN_F if sex == "F" else _GIVEN_M)),
        )
        birth = (
            f"{2024 - base_age:04d}{int(prng.integers(1, 13)):02d}{int(prng.integers(1, 29)):02d}"
        )
        patient_id = f"SYN-{site.name.upper()}-{patient:05d}"
        street = f"{int(prng.integers(1, 200))} {prng.choice(_STREETS)}"
        address = f"{street}^^Springfield^^{int(prng.integers(10000, 99999))}"
        day0 = int(prng.integers(0, 3 * 365))
        day = day0
        for followup in range(n_images):
            index = len(specs)
            irng = np.random.default_rng([seed, site_key, 2, index])
            day += 0 if followup == 0 else int(irng.integers(3, 200))
            age = base_age + (day - day0) // 365
            logit = base_logit + propensity + 0.025 * (age - 52) + (0.1 if sex == "M" else -0.1)
            abnormal = irng.random() < 1 / (1 + math.exp(-logit))
            labels: tuple[str, ...] = ()
            lesions: list[_Lesion] = []
            if abnormal:
                keep = [f for f in patient_findings if f in _CHRONIC or irng.random() < 0.6]
                if not keep:
                    keep = [str(irng.choice(patient_findings))]
                labels = tuple(sorted(keep))
                subtle = irng.random() < config.subtle_fraction
                for kind in labels:
                    # Chronic findings keep their place and size across follow-ups.
                    lrng = (
                        np.random.default_rng([seed, site_key, 3, patient, FINDINGS.index(kind)])
                        if kind in _CHRONIC
                        else irng
                    )
                    lesions.append(_draw_lesion(kind, lrng, config, subtle))
            noisy = irng.random() < config.label_noise
            if noisy and abnormal:
                lesions = []  # labelled abnormal, nothing visible
            elif noisy:
                kind = str(irng.choice(FINDINGS, p=weights / weights.sum()))
                lesions = [_draw_lesion(kind, irng, config, subtle=True)]
            ap_rate = site.ap_rate * (config.ap_abnormal_ratio if abnormal else 1.0)
            view = "AP" if irng.random() < min(ap_rate, 0.9) else "PA"
            date = np.datetime64("2021-01-04") + np.timedelta64(day, "D")
            image_index = f"{site.name}_{patient:05d}_{followup:03d}.dcm"
            accession = _name_hash(f"{seed}/{site.name}/{index}")
            specs.append(
                _ImageSpec(
                    index=index,
                    image_index=image_index,
                    patient_number=patient,
                    followup=followup,
                    patient_id=patient_id,
                    sex=sex,
                    age=int(age),
                    view=view,
                    labels=labels,
                    lesions=tuple(lesions),
                    anatomy_seed=(seed, site_key, 5, patient),
                    image_seed=(seed, site_key, 4, index),
                    rows=rows,
                    cols=cols,
                    pixel_spacing=spacing,
                    study_date=str(date).replace("-", ""),
                    phi={
                        "PatientName": f"{family}^{given}^Synthetic",
                        "PatientBirthDate": birth,
                        "PatientAddress": address,
                        "AccessionNumber": f"SYN{accession % 10**9:09d}",
                        "StudyID": f"S{patient:05d}{followup:03d}",
                        "ReferringPhysicianName": str(irng.choice(_STAFF)),
                        "OperatorsName": str(irng.choice(_OPERATORS)),
                    },
                )
            )
    return specs


# --------------------------------------------------------------------------------------------
# Rendering: density map from anatomy and findings, then the site's acquisition
# --------------------------------------------------------------------------------------------

# Nominal strength of each finding at contrast multiplier 1. In-lung findings are the fraction of
# lung air they replace; Cardiomegaly is a relative heart enlargement; Pneumothorax and
# Emphysema the relative extra lucency; Hernia an added density.
_NOMINAL_CONTRAST = {
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
_LUNG_AIR = 0.34  # density removed by a full-thickness lung (soft tissue is about 0.6)
_DENSITY_SCALE = 1.05  # density mapped to display value 1


def _ramp(z: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 (z <= -width/2) to 1 (z >= width/2); cheaper than a sigmoid."""
    return np.clip(0.5 + z / width, 0.0, 1.0)


def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour index and weight for linear interpolation of n_in points onto n_out."""
    pos = (np.arange(n_out, dtype=np.float32) + 0.5) * np.float32((n_in - 1) / n_out)
    lo = np.minimum(pos.astype(np.int64), n_in - 2)
    return lo, (pos - lo).astype(np.float32)


def _smooth_field(rng: np.random.Generator, rows: int, cols: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field with about ``cells`` features across the image."""
    h = max(3, round(cells * rows / max(rows, cols)) + 2)
    w = max(3, round(cells * cols / max(rows, cols)) + 2)
    small = rng.standard_normal((h, w)).astype(np.float32)
    # Separable linear upsampling by gathers, not BLAS: BLAS threads crawl on a busy machine and
    # their summation order may differ between machines, which would break byte-identity.
    lo, frac = _interp_weights(rows, h)
    tall = small[lo] * (1 - frac)[:, None] + small[lo + 1] * frac[:, None]
    lo, frac = _interp_weights(cols, w)
    return tall[:, lo] * (1 - frac) + tall[:, lo + 1] * frac


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur by shifted sums (numpy only, edge-padded)."""
    if sigma < 0.3:
        return img
    radius = max(1, math.ceil(2.5 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    rows, cols = img.shape
    padded = np.pad(img, ((radius, radius), (0, 0)), mode="edge")
    out = sum(t * padded[k : k + rows] for k, t in enumerate(taps))
    padded = np.pad(out, ((0, 0), (radius, radius)), mode="edge")
    return sum(t * padded[:, k : k + cols] for k, t in enumerate(taps))


@dataclass(frozen=True)
class _Anatomy:
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


def _anatomy(spec: _ImageSpec, config: SynthConfig, rng: np.random.Generator) -> _Anatomy:
    """Draw the patient's anatomy (shared by follow-ups) and this image's breathing and view."""
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
    dome_height = (0.13, 0.11)
    lesions = {lesion.kind: lesion for lesion in spec.lesions}
    if "Cardiomegaly" in lesions:
        les = lesions["Cardiomegaly"]
        heart_a *= 1 + _NOMINAL_CONTRAST["Cardiomegaly"] * les.contrast * les.size
        heart_b *= 1 + 0.4 * _NOMINAL_CONTRAST["Cardiomegaly"] * les.contrast * les.size
    if "Emphysema" in lesions:
        strength = min(1.0, lesions["Emphysema"].contrast * lesions["Emphysema"].size)
        dome += 0.08 * strength
        dome_height = (0.13 * (1 - 0.7 * strength), 0.11 * (1 - 0.7 * strength))
    return _Anatomy(
        body_width=body_width,
        lung_x=0.37 * width_ratio,
        lung_a=lung_a,
        apex=-0.72 + 0.02 * av * prng.standard_normal(),
        # Image left is the patient's right (PA convention): the right dome sits higher.
        dome=(dome - 0.035, dome),
        dome_height=dome_height,
        heart=(0.07, dome - 0.3, heart_a, heart_b, 0.3),
        rib_density=rib,
        marking_density=markings,
        breast=breast,
        clavicle_y=clavicle_y,
    )


def _render_density(spec: _ImageSpec, config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Density map (attenuation, arbitrary units) of one image, findings included."""
    rows, cols = spec.rows, spec.cols
    anat = _anatomy(spec, config, rng)
    pj = config.pose_jitter
    theta = math.radians(3.0 * pj * float(rng.standard_normal()))
    scale = 1 + 0.04 * pj * float(rng.standard_normal())
    tx, ty = (float(v) for v in 0.03 * pj * rng.standard_normal(2))
    half = rows / 2
    y0 = ((np.arange(rows, dtype=np.float32) + 0.5 - rows / 2) / half)[:, None]
    x0 = ((np.arange(cols, dtype=np.float32) + 0.5 - cols / 2) / half)[None, :]
    c, s = math.cos(theta) / scale, math.sin(theta) / scale
    X = c * (x0 - tx) + s * (y0 - ty)
    Y = -s * (x0 - tx) + c * (y0 - ty + 0.04)
    U = np.abs(X)

    # Body: a cylinder of soft tissue, narrowing to the neck above the shoulders.
    width = anat.body_width * (0.5 + 0.5 * _ramp(Y + 0.8, 0.25))
    rel = np.minimum(U / width, 1.0)
    density = 0.6 * np.sqrt(1.0 - rel * rel) * _ramp(1.0 - rel, 0.04)
    if anat.breast > 0:
        for side in (-1, 1):
            r2 = ((X - side * 0.42 * anat.body_width / 0.74) / 0.3) ** 2 + ((Y - 0.42) / 0.22) ** 2
            density += anat.breast * _ramp(1.0 - r2, 0.35) * _ramp(0.62 - Y, 0.04)

    lesions = spec.lesions
    kinds = {lesion.kind for lesion in lesions}
    emphysema = next((les for les in lesions if les.kind == "Emphysema"), None)
    air_gain = 1.0
    marking_gain = 1.0
    if emphysema is not None:
        strength = _NOMINAL_CONTRAST["Emphysema"] * emphysema.contrast
        air_gain += 0.35 * strength
        marking_gain -= 0.6 * min(1.0, strength)

    # Lungs: egg-shaped, narrow at the apex; cut below by the diaphragm domes.
    lung = np.zeros((rows, cols), dtype=np.float32)
    air_depth = np.zeros((rows, cols), dtype=np.float32)
    lung_r: dict[int, np.ndarray] = {}
    lung_side: dict[int, np.ndarray] = {}
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
        mask = _ramp(1.0 - r, 0.05) * _ramp(dome_y - Y, 0.02)
        lung_r[side], lung_side[side] = r, mask
        lung += mask
        # Air is thickest in the middle of the lung, so lungs darken towards their centre.
        air_depth += mask * (0.45 + 0.55 * np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0)))
    hx, hy, ha, hb, tilt = anat.heart
    ct, st = math.cos(tilt), math.sin(tilt)
    dx, dy = X - hx, Y - hy
    hr = np.sqrt(((ct * dx + st * dy) / ha) ** 2 + ((-st * dx + ct * dy) / hb) ** 2)
    heart = _ramp(1.0 - hr, 0.08)
    air = _LUNG_AIR * air_gain * air_depth * (1.0 - 0.85 * heart)

    # Pneumothorax: a lucent rim without markings outside a visible visceral pleural line.
    no_markings = np.zeros((rows, cols), dtype=np.float32)
    for les in lesions:
        if les.kind != "Pneumothorax":
            continue
        strength = _NOMINAL_CONTRAST["Pneumothorax"] * les.contrast
        edge = 1.0 - 0.22 * les.size
        r, mask = lung_r[les.side], lung_side[les.side]
        upper = _ramp(0.25 - Y + 0.4 * les.w, 0.3) * mask
        rim = _ramp(r - edge, 0.02) * upper
        no_markings = np.maximum(no_markings, rim)
        air = air + 0.25 * strength * _LUNG_AIR * rim
        density += 0.06 * strength * _ramp(0.022 - np.abs(r - edge), 0.012) * upper

    mrng = np.random.default_rng([*spec.anatomy_seed, 7])
    field = _smooth_field(mrng, rows, cols, 30) + 0.5 * _smooth_field(rng, rows, cols, 60)
    hilum = np.exp(-(((U - 0.17) ** 2) / 0.12 + ((Y - 0.02) ** 2) / 0.25))
    vessels = _ramp(0.35 - np.abs(field), 0.3) * (0.2 + hilum)
    markings = anat.marking_density * marking_gain * vessels * lung * (1.0 - no_markings)
    markings *= 1.0 - heart

    # Mediastinum, trachea, spine, aortic knob and heart.
    mw = 0.11 + 0.05 * _ramp(Y + 0.2, 0.6)
    density += 0.06 * _ramp(mw - np.abs(X - 0.02), 0.04) * _ramp(hy - Y, 0.2)
    density -= 0.07 * _ramp(0.028 - np.abs(X), 0.012) * _ramp(-0.4 - Y, 0.08)
    density += 0.1 * _ramp(0.065 - U, 0.02) * (0.85 + 0.15 * np.cos(Y * (2 * math.pi / 0.09)))
    knob = ((X - 0.1) ** 2 + (Y + 0.27) ** 2) / 0.055**2
    density += 0.12 * _ramp(1.0 - knob, 0.4)
    density += 0.04 * heart

    # Ribs: posterior arcs curving down laterally, fainter anterior ribs sloping down medially.
    inside = _ramp(anat.body_width * 0.93 - U, 0.04)
    phase = np.clip((Y + 0.2 * U - 0.62 * U * U + 0.83) / 1.45, 0.0, 1.0)
    ribs = 0.5 + 0.5 * np.cos(2 * math.pi * 9.0 * (phase + 0.22 * phase * phase))
    ribs = ribs * ribs
    ribs = ribs * ribs * ribs * _ramp(0.98 - phase, 0.04)  # cos**6: narrow bright bands
    phase_a = np.clip((Y + 0.35 * U + 0.55) / 1.3, 0.0, 1.0)
    anterior = 0.5 + 0.5 * np.cos(2 * math.pi * 6.0 * phase_a)
    ribs += 0.45 * anterior * anterior * anterior * _ramp(0.95 - phase_a, 0.05)
    above_domes = _ramp(anat.dome[1] + 0.05 - Y, 0.2)
    density += anat.rib_density * ribs * inside * _ramp(U - 0.07, 0.03) * (0.4 + 0.6 * above_domes)
    clavicle = anat.clavicle_y - 0.2 * (U - 0.06) + 0.1 * (U - 0.06) ** 2
    density += (
        0.14
        * _ramp(0.03 - np.abs(Y - clavicle), 0.02)
        * _ramp(U - 0.06, 0.03)
        * _ramp(0.6 - U, 0.05)
    )

    opacity = _lesion_opacity(spec, X, Y, U, anat, lung_r, lung_side, rng)
    if "Edema" in kinds or "Effusion" in kinds:
        # Fluid also thickens the soft tissue a little (vascular redistribution, hazy outlines).
        density += 0.02 * lung
    density = density - air + air * np.minimum(opacity, 1.0) + markings
    return _hernia(spec, X, Y, anat, density)


def _lesion_center(les: _Lesion, anat: _Anatomy) -> tuple[float, float]:
    """Lesion centre in image coordinates from its lung-local position."""
    k = 0 if les.side == -1 else 1
    cy = anat.apex + (anat.dome[k] - anat.apex) * (0.5 + 0.45 * les.w)
    cx = les.side * (anat.lung_x + 0.75 * anat.lung_a * les.u)
    return cx, min(cy, anat.dome[k] - anat.dome_height[k] - 0.04)


def _lesion_opacity(
    spec: _ImageSpec,
    X: np.ndarray,
    Y: np.ndarray,
    U: np.ndarray,
    anat: _Anatomy,
    lung_r: dict[int, np.ndarray],
    lung_side: dict[int, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Fraction of lung air replaced by in-lung findings (0 where the lung is clear)."""
    rows, cols = spec.rows, spec.cols
    opacity = np.zeros((rows, cols), dtype=np.float32)
    for les in spec.lesions:
        strength = _NOMINAL_CONTRAST[les.kind] * les.contrast
        size = les.size
        lrng = np.random.default_rng(les.seed)
        cx, cy = _lesion_center(les, anat)
        k = 0 if les.side == -1 else 1
        if les.kind in ("Nodule", "Mass"):
            radius = (0.035 if les.kind == "Nodule" else 0.1) * size
            dx, dy = X - cx, Y - cy
            dist = np.sqrt(dx * dx + dy * dy) + 1e-6
            rr = dist / radius
            if les.kind == "Mass":
                # Lobulated outline, radius * (1 + 0.15 cos(3 angle + phi)), without arctan2.
                cos_t, sin_t = dx / dist, dy / dist
                cos3 = cos_t * (4 * cos_t * cos_t - 3)
                sin3 = sin_t * (3 - 4 * sin_t * sin_t)
                phi = float(lrng.uniform(0, 2 * math.pi))
                rr = rr / (1 + 0.15 * (cos3 * math.cos(phi) - sin3 * math.sin(phi)))
            opacity += strength * np.sqrt(np.clip(1.0 - rr * rr, 0.0, 1.0)) * 1.4
        elif les.kind in ("Consolidation", "Pneumonia", "Infiltration"):
            radius = {"Consolidation": 0.16, "Pneumonia": 0.15, "Infiltration": 0.22}[les.kind]
            radius *= size
            rr = ((X - cx) ** 2 + ((Y - cy) / 1.2) ** 2) / radius**2
            cells = 14 if les.kind == "Consolidation" else 22
            patch = np.clip(0.6 + 0.7 * _smooth_field(lrng, rows, cols, cells), 0.0, 1.0)
            opacity += strength * _ramp(1.0 - rr, 1.2) * patch
        elif les.kind == "Effusion":
            # Fluid layers at the base and climbs the lateral wall (meniscus), blunting the
            # costophrenic angle.
            height = 0.14 * size
            lateral = np.clip((les.side * X - anat.lung_x) / anat.lung_a, -1.0, 1.0)
            level = anat.dome[k] - height + 0.08 * size * (1.0 - (0.5 + 0.5 * lateral) ** 2)
            opacity += strength * _ramp(Y - level, 0.08) * lung_side[les.side]
        elif les.kind == "Atelectasis":
            angle = math.radians(float(lrng.uniform(-30, 10)))
            length, half_width = 0.22 * size, 0.022 * size
            par = (X - cx) * math.cos(angle) + (Y - cy) * math.sin(angle) * les.side
            perp = -(X - cx) * math.sin(angle) * les.side + (Y - cy) * math.cos(angle)
            band = _ramp(half_width - np.abs(perp), half_width) * _ramp(
                length / 2 - np.abs(par), 0.06
            )
            opacity += strength * 1.3 * band
        elif les.kind == "Edema":
            haze = np.exp(-((U - 0.2) ** 2 / (0.05 * size) + (Y - 0.08) ** 2 / (0.12 * size)))
            patch = np.clip(0.7 + 0.5 * _smooth_field(lrng, rows, cols, 10), 0.0, 1.0)
            opacity += strength * haze * patch
        elif les.kind == "Fibrosis":
            net = _smooth_field(lrng, rows, cols, 70)
            reticular = _ramp(0.3 - np.abs(net), 0.25)
            basal = _ramp(Y - (anat.apex + 0.6), 0.5)
            periphery = sum(_ramp(lung_r[s] - 0.55, 0.3) for s in (-1, 1))
            opacity += strength * 1.3 * reticular * basal * periphery
        elif les.kind == "Pleural_Thickening":
            thickness = 0.08 * size
            r = lung_r[les.side]
            rim = _ramp(r - (1.0 - thickness), 0.04) * _ramp(
                les.side * X - anat.lung_x + 0.05, 0.1
            )
            opacity += strength * rim * lung_side[les.side]
    return opacity


def _hernia(
    spec: _ImageSpec, X: np.ndarray, Y: np.ndarray, anat: _Anatomy, density: np.ndarray
) -> np.ndarray:
    """Add a retrocardiac hiatal hernia (round density with a gas cap) where labelled."""
    for les in spec.lesions:
        if les.kind != "Hernia":
            continue
        strength = _NOMINAL_CONTRAST["Hernia"] * les.contrast
        radius = 0.09 * les.size
        cy = anat.dome[1] - anat.dome_height[1] - 0.05
        rr = ((X - 0.04) ** 2 + (Y - cy) ** 2) / radius**2
        blob = _ramp(1.0 - rr, 0.3)
        gas = _ramp(cy - radius * 0.3 - Y, 0.02)
        density = density + strength * blob * (1.0 - 1.8 * gas)
    return density


def _acquire(
    density: np.ndarray, site: SiteProfile, spec: _ImageSpec, rng: np.random.Generator
) -> np.ndarray:
    """Turn a density map into stored pixel values as this site's detector and processing would."""
    rows, cols = density.shape
    v = density / _DENSITY_SCALE
    # Over-exposure burns through (darker, flatter); under-exposure the opposite, but noisier.
    v = v * (1.0 - 0.3 * (site.exposure - 1.0)) - 0.05 * (site.exposure - 1.0)
    y = ((np.arange(rows, dtype=np.float32) / rows) - 0.5)[:, None]
    heel = (0.03 * float(rng.uniform(-1, 1))) * y + 0.015 * _smooth_field(rng, rows, cols, 3)
    v = np.clip(v + heel, 0.0, 1.0) ** site.contrast
    blur = site.blur * rows / site.rows  # the detector's blur, in this image's pixels
    v = _blur(v, blur)
    noise = rng.standard_normal((rows, cols), dtype=np.float32)
    v = v + noise * (site.noise / math.sqrt(site.exposure)) * (0.5 + v)
    maxval = 2**site.bits_stored - 1
    stored = (0.04 + 0.92 * np.clip(v, 0.0, 1.0)) * maxval
    if site.photometric == "MONOCHROME1":
        stored = maxval - stored  # MONOCHROME1: high stored value = dark (air)
    return np.clip(np.rint(stored), 0, maxval).astype(np.uint16)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _uid(*parts: object) -> str:
    """Deterministic DICOM UID from the given parts."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _write_dicom(
    path: Path, pixels: np.ndarray, spec: _ImageSpec, site: SiteProfile, seed: int
) -> None:
    """Write one image as a DX or CR DICOM file with fake PHI and no timestamps."""
    key = ("cxr-triage-synth", seed, site.name, spec.patient_id, spec.followup)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = site.sop_class_uid
    meta.MediaStorageSOPInstanceUID = _uid(*key, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = site.sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(*key, "study")
    ds.SeriesInstanceUID = _uid(*key, "series")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.study_date
    ds.StudyID = spec.phi["StudyID"]
    ds.AccessionNumber = spec.phi["AccessionNumber"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = site.modality
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if site.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = site.manufacturer
    ds.ManufacturerModelName = site.model_name
    ds.InstitutionName = site.institution
    ds.StationName = site.name
    ds.ReferringPhysicianName = spec.phi["ReferringPhysicianName"]
    ds.OperatorsName = spec.phi["OperatorsName"]
    ds.PatientName = spec.phi["PatientName"]
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.phi["PatientBirthDate"]
    ds.PatientSex = spec.sex
    ds.PatientAge = f"{min(spec.age, 999):03d}Y"
    ds.PatientAddress = spec.phi["PatientAddress"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view
    ds.SeriesDescription = f"Chest {spec.view} (synthetic)"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = site.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [spec.pixel_spacing, spec.pixel_spacing]
    ds.ImagerPixelSpacing = [spec.pixel_spacing, spec.pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = site.bits_stored
    ds.HighBit = site.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = site.rescale_slope
    ds.RescaleIntercept = site.rescale_intercept
    ds.RescaleType = "US"
    # Window over the body's useful range (robust percentiles of the modality values).
    lo, hi = np.percentile(pixels[::4, ::4], [1.0, 99.0])
    lo = float(lo) * site.rescale_slope + site.rescale_intercept
    hi = float(hi) * site.rescale_slope + site.rescale_intercept
    ds.WindowCenter = round((lo + hi) / 2, 1)
    ds.WindowWidth = round(max(hi - lo, 1.0), 1)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _make_image(job: tuple[_ImageSpec, SiteProfile, SynthConfig, int, str]) -> None:
    """Render and write one image (runs in a worker process when ``workers`` > 1)."""
    spec, site, config, seed, images_dir = job
    rng = np.random.default_rng(list(spec.image_seed))
    density = _render_density(spec, config, rng)
    pixels = _acquire(density, site, spec, rng)
    _write_dicom(Path(images_dir) / spec.image_index, pixels, spec, site, seed)


def _label_row(spec: _ImageSpec, site: SiteProfile) -> dict[str, object]:
    return {
        "Image Index": spec.image_index,
        "Finding Labels": "|".join(spec.labels) if spec.labels else NO_FINDING,
        "Follow-up #": spec.followup,
        "Patient ID": spec.patient_id,
        "Patient Age": spec.age,
        "Patient Gender": spec.sex,
        "View Position": spec.view,
        "OriginalImage[Width": spec.cols,
        "Height]": spec.rows,
        "OriginalImagePixelSpacing[x": spec.pixel_spacing,
        "y]": spec.pixel_spacing,
        "Site": site.name,
    }


def _run_jobs(
    jobs: list[tuple[_ImageSpec, SiteProfile, SynthConfig, int, str]], workers: int
) -> Iterator[None]:
    if workers == 1:
        for job in jobs:
            yield _make_image(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(
            _make_image, jobs, chunksize=max(1, min(32, len(jobs) // (4 * workers)))
        )


def generate_dataset(
    out_dir: Path,
    n: int,
    site: str,
    seed: int,
    config: SynthConfig = SynthConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    workers: int = 1,
    *,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Generate ``n`` synthetic chest radiographs of one site with ChestX-ray14-style labels.

    Writes ``out_dir/images/<Image Index>`` (DICOM) and ``out_dir/labels.csv`` (the header of
    ChestX-ray14's ``Data_Entry_2017.csv`` plus ``Site``). The result is byte-identical for the
    same ``(n, site, seed, config)`` whatever ``workers`` is. Files are written into a hidden
    temporary sibling folder that is renamed to ``out_dir`` only when everything succeeded, so a
    failed or killed run never leaves a partial ``out_dir``.

    Args:
        out_dir: folder to create.
        n: number of images (> 0).
        site: a key of :data:`SITE_PRESETS` or any new site name (see :func:`site_profile`).
        seed: dataset seed (>= 0).
        config: difficulty and content knobs.
        workers: processes to render with (>= 1).
        overwrite: replace an existing non-empty ``out_dir``; otherwise that is an error.

    Returns:
        The labels table as written (columns :data:`LABEL_COLUMNS`, as pandas reads the CSV).

    Raises:
        ConfigError: an argument is out of range or ``out_dir`` exists and is not empty.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ConfigError(f"synth: n must be a positive number of images, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"synth: seed must be an integer >= 0, got {seed!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"synth: workers must be an integer >= 1, got {workers!r}")
    if not isinstance(config, SynthConfig):
        raise ConfigError(f"synth: config must be a SynthConfig, got {type(config).__name__}")
    profile = site_profile(site)
    out_dir = Path(out_dir)
    if (
        out_dir.exists()
        and not (out_dir.is_dir() and not any(out_dir.iterdir()))
        and not overwrite
    ):
        raise ConfigError(
            f"synth: {out_dir} already exists and is not empty; remove it or pass overwrite=True"
        )
    start = time.perf_counter()
    specs = _plan(n, profile, seed, config)
    with atomic_dir(out_dir) as tmp:
        images = tmp / "images"
        images.mkdir()
        jobs = [(spec, profile, config, seed, str(images)) for spec in specs]
        for done, _ in enumerate(_run_jobs(jobs, min(workers, n)), start=1):
            if done % 500 == 0:
                logger.info("synth %s: %d/%d images", profile.name, done, n)
        table = pd.DataFrame(
            [_label_row(spec, profile) for spec in specs], columns=list(LABEL_COLUMNS)
        )
        table.to_csv(tmp / "labels.csv", index=False, lineterminator="\n")
    elapsed = time.perf_counter() - start
    logger.info(
        "synth %s: wrote %d images (%d patients, %.0f%% abnormal) to %s in %.1f s (%.1f images/s)",
        profile.name,
        n,
        table["Patient ID"].nunique(),
        100 * float((table["Finding Labels"] != NO_FINDING).mean()),
        out_dir,
        elapsed,
        n / elapsed,
    )
    return table
