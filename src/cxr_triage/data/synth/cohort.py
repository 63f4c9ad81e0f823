"""The cohort: who is imaged, when, with what labels and which lesions (the plan of a dataset).

Planning is cheap and sequential (in the parent process); each image's plan is an
:class:`ImageSpec` that a worker renders and writes. Every draw comes from a generator seeded by
``(seed, site, purpose, patient or image)``, so one image's plan never depends on another's.

Demographics shift prevalence (older and male patients are a little more often abnormal), AP views
are more frequent among abnormal images, and chronic findings persist across a patient's
follow-ups (same place, same size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxr_triage.data.synth import portable
from cxr_triage.data.synth.config import SynthConfig
from cxr_triage.data.synth.sites import SiteProfile, name_hash
from cxr_triage.vocabulary import FINDINGS

__all__ = [
    "CHRONIC_FINDINGS",
    "FINDING_WEIGHTS",
    "LESION_ROWS",
    "ImageSpec",
    "Lesion",
    "draw_lesion",
    "output_size",
    "plan_images",
]

# Relative label frequencies in ChestX-ray14 (images per finding), so that label mixes look real.
FINDING_WEIGHTS = {
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
CHRONIC_FINDINGS = frozenset(
    {"Cardiomegaly", "Emphysema", "Fibrosis", "Mass", "Nodule", "Pleural_Thickening", "Hernia"}
)
# Typical rows of each finding (lung-local ``w``: -1 apex .. 1 base): effusions and atelectasis
# basal, pneumothorax apical-lateral, pneumonia and consolidation mid to low, the rest anywhere
# (edema, cardiomegaly, emphysema and hernia do not use the position).
_ANYWHERE = (-0.7, 0.7)
LESION_ROWS = {
    "Atelectasis": (0.3, 0.8),
    "Cardiomegaly": _ANYWHERE,
    "Effusion": (0.3, 0.8),
    "Infiltration": _ANYWHERE,
    "Mass": _ANYWHERE,
    "Nodule": _ANYWHERE,
    "Pneumonia": (-0.2, 0.7),
    "Pneumothorax": (-0.8, -0.2),
    "Consolidation": (-0.2, 0.7),
    "Edema": _ANYWHERE,
    "Emphysema": _ANYWHERE,
    "Fibrosis": _ANYWHERE,
    "Pleural_Thickening": _ANYWHERE,
    "Hernia": _ANYWHERE,
}
# Most findings a patient can carry, by count: 1 is the most common, as in ChestX-ray14.
_FINDING_COUNT_P = (0.6, 0.25, 0.1, 0.05) + (0.02,) * 10

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

# Purposes in the seed sequences, so that no two draws share a stream.
_PATIENT, _IMAGE, _CHRONIC_LESION, _IMAGE_PIXELS, _ANATOMY = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Lesion:
    """One finding as drawn: kind, where, how big and how dense."""

    kind: str
    side: int  # -1: image left (patient's right in PA), +1: image right
    u: float  # position across the lung, -1 medial .. 1 lateral (lung-local units)
    w: float  # position down the lung, -1 apex .. 1 base
    size: float
    contrast: float
    seed: int  # shape details (lobulation, texture)


@dataclass(frozen=True)
class ImageSpec:
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
    lesions: tuple[Lesion, ...]
    anatomy_seed: tuple[int, ...]
    image_seed: tuple[int, ...]
    rows: int
    cols: int
    pixel_spacing: float
    study_date: str
    phi: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Patient:
    """One patient: identity, demographics and the findings their abnormal images draw from."""

    number: int
    patient_id: str
    n_images: int
    sex: str
    base_age: int
    propensity: float  # how sick: shifts the logit of every image of this patient
    findings: tuple[str, ...]
    name: str
    birth_date: str
    address: str
    day0: int  # day of the first examination after 2021-01-04


@dataclass(frozen=True)
class _Plan:
    """What every patient and image of one dataset shares."""

    site: SiteProfile
    seed: int
    site_key: int
    config: SynthConfig
    rows: int
    cols: int
    spacing: float
    base_logit: float
    finding_p: np.ndarray  # FINDINGS' relative frequencies
    count_p: np.ndarray  # probabilities of 1 .. max_findings findings per patient


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(portable.log(p / (1 - p)))


def output_size(site: SiteProfile, config: SynthConfig) -> tuple[int, int, float]:
    """Rows, columns and pixel spacing (mm) after the optional size override."""
    if config.image_size is None:
        return site.rows, site.cols, site.pixel_spacing
    factor = config.image_size / max(site.rows, site.cols)
    rows = max(32, round(site.rows * factor))
    cols = max(32, round(site.cols * factor))
    return rows, cols, round(site.pixel_spacing * site.rows / rows, 4)


def draw_lesion(kind: str, rng: np.random.Generator, config: SynthConfig, subtle: bool) -> Lesion:
    """Draw where and how visible one finding is (subtle: faint and at the smallest size)."""
    lo, hi = config.lesion_contrast
    contrast = float(rng.uniform(lo, hi))
    size = float(rng.uniform(*config.lesion_size))
    if subtle:
        contrast *= config.subtle_scale
        size = config.lesion_size[0]
    w = float(rng.uniform(*LESION_ROWS[kind]))
    return Lesion(
        kind=kind,
        side=int(rng.choice([-1, 1])),
        u=float(rng.uniform(-0.5, 0.7)),
        w=w,
        size=size,
        contrast=contrast,
        seed=int(rng.integers(0, 2**31)),
    )


def plan_images(n: int, site: SiteProfile, seed: int, config: SynthConfig) -> list[ImageSpec]:
    """Assign ``n`` images to patients and follow-ups; draw demographics, views and labels.

    Args:
        n: number of images.
        site: the acquiring site (prevalence, AP rate, name).
        seed: dataset seed.
        config: the generator's knobs.

    Returns:
        One :class:`ImageSpec` per image, in file order.
    """
    plan = _start_plan(site, seed, config)
    specs: list[ImageSpec] = []
    number = 0
    while len(specs) < n:
        number += 1
        patient = _draw_patient(plan, number, remaining=n - len(specs))
        specs.extend(_draw_visits(plan, patient, first_index=len(specs)))
    return specs


def _start_plan(site: SiteProfile, seed: int, config: SynthConfig) -> _Plan:
    rows, cols, spacing = output_size(site, config)
    prevalence = site.abnormal_prevalence if config.prevalence is None else config.prevalence
    weights = np.array([FINDING_WEIGHTS[f] for f in FINDINGS], dtype=float)
    count_p = np.array(_FINDING_COUNT_P)[: config.max_findings]
    count_p /= count_p.sum()
    return _Plan(
        site=site,
        seed=seed,
        site_key=name_hash(site.name),
        config=config,
        rows=rows,
        cols=cols,
        spacing=spacing,
        base_logit=_logit(prevalence),
        finding_p=weights / weights.sum(),
        count_p=count_p,
    )


def _draw_patient(plan: _Plan, number: int, remaining: int) -> _Patient:
    """Draw one patient: follow-up count, sex, age, sickness, findings and fake PHI."""
    config = plan.config
    prng = np.random.default_rng([plan.seed, plan.site_key, _PATIENT, number])
    n_images = min(1 + int(prng.geometric(0.45)) - 1, config.max_followups, remaining)
    sex = "F" if prng.random() < 0.45 else "M"
    base_age = int(np.clip(prng.normal(52, 17), 18, 92))
    # Patients differ in how sick they are; images of one patient are correlated.
    propensity = float(prng.normal(0.0, 0.6))
    # A patient's possible findings; each abnormal follow-up shows a subset of them.
    count = int(prng.choice(np.arange(1, config.max_findings + 1), p=plan.count_p))
    findings = [str(f) for f in prng.choice(FINDINGS, size=count, replace=False, p=plan.finding_p)]
    if base_age > 60 and prng.random() < 0.15 and "Cardiomegaly" not in findings:
        findings[-1] = "Cardiomegaly"
    family = str(prng.choice(_FAMILY))
    given = str(prng.choice(_GIVEN_F if sex == "F" else _GIVEN_M))
    birth = f"{2024 - base_age:04d}{int(prng.integers(1, 13)):02d}{int(prng.integers(1, 29)):02d}"
    street = f"{int(prng.integers(1, 200))} {prng.choice(_STREETS)}"
    address = f"{street}^^Springfield^^{int(prng.integers(10000, 99999))}"
    return _Patient(
        number=number,
        patient_id=f"SYN-{plan.site.name.upper()}-{number:05d}",
        n_images=n_images,
        sex=sex,
        base_age=base_age,
        propensity=propensity,
        findings=tuple(findings),
        name=f"{family}^{given}^Synthetic",
        birth_date=birth,
        address=address,
        day0=int(prng.integers(0, 3 * 365)),
    )


def _draw_visits(plan: _Plan, patient: _Patient, first_index: int) -> list[ImageSpec]:
    """Draw each follow-up of one patient: date, age, label, lesions, view and staff."""
    specs = []
    day = patient.day0
    for followup in range(patient.n_images):
        index = first_index + followup
        irng = np.random.default_rng([plan.seed, plan.site_key, _IMAGE, index])
        day += 0 if followup == 0 else int(irng.integers(3, 200))
        age = patient.base_age + (day - patient.day0) // 365
        abnormal = irng.random() < _abnormal_probability(plan, patient, age)
        labels, lesions = _draw_findings(plan, patient, irng) if abnormal else ((), [])
        lesions = _apply_label_noise(plan, irng, abnormal, lesions)
        ap_rate = plan.site.ap_rate * (plan.config.ap_abnormal_ratio if abnormal else 1.0)
        view = "AP" if irng.random() < min(ap_rate, 0.9) else "PA"
        specs.append(_image_spec(plan, patient, irng, index, followup, day, age, view, labels,
                                 lesions))  # fmt: skip
    return specs


def _abnormal_probability(plan: _Plan, patient: _Patient, age: int) -> float:
    """Site prevalence shifted by the patient's sickness, age (+0.025/year) and sex (M +0.1)."""
    logit = (
        plan.base_logit
        + patient.propensity
        + 0.025 * (age - 52)
        + (0.1 if patient.sex == "M" else -0.1)
    )
    return 1 / (1 + float(portable.exp(-logit)))


def _draw_findings(
    plan: _Plan, patient: _Patient, irng: np.random.Generator
) -> tuple[tuple[str, ...], list[Lesion]]:
    """Labels and lesions of an abnormal image: chronic findings always, acute ones at 60%."""
    keep = [f for f in patient.findings if f in CHRONIC_FINDINGS or irng.random() < 0.6]
    if not keep:
        keep = [str(irng.choice(patient.findings))]
    labels = tuple(sorted(keep))
    subtle = irng.random() < plan.config.subtle_fraction
    lesions = []
    for kind in labels:
        # Chronic findings keep their place and size across follow-ups.
        lrng = (
            np.random.default_rng(
                [plan.seed, plan.site_key, _CHRONIC_LESION, patient.number, FINDINGS.index(kind)]
            )
            if kind in CHRONIC_FINDINGS
            else irng
        )
        lesions.append(draw_lesion(kind, lrng, plan.config, subtle))
    return labels, lesions


def _apply_label_noise(
    plan: _Plan, irng: np.random.Generator, abnormal: bool, lesions: list[Lesion]
) -> list[Lesion]:
    """Report-mined labels disagree with the image now and then (``config.label_noise``)."""
    if not irng.random() < plan.config.label_noise:
        return lesions
    if abnormal:
        return []  # labelled abnormal, nothing visible
    kind = str(irng.choice(FINDINGS, p=plan.finding_p))  # "No Finding", a faint finding
    return [draw_lesion(kind, irng, plan.config, subtle=True)]


def _image_spec(
    plan: _Plan,
    patient: _Patient,
    irng: np.random.Generator,
    index: int,
    followup: int,
    day: int,
    age: int,
    view: str,
    labels: tuple[str, ...],
    lesions: list[Lesion],
) -> ImageSpec:
    site, seed = plan.site, plan.seed
    date = np.datetime64("2021-01-04") + np.timedelta64(day, "D")
    accession = name_hash(f"{seed}/{site.name}/{index}")
    return ImageSpec(
        index=index,
        image_index=f"{site.name}_{patient.number:05d}_{followup:03d}.dcm",
        patient_number=patient.number,
        followup=followup,
        patient_id=patient.patient_id,
        sex=patient.sex,
        age=int(age),
        view=view,
        labels=labels,
        lesions=tuple(lesions),
        anatomy_seed=(seed, plan.site_key, _ANATOMY, patient.number),
        image_seed=(seed, plan.site_key, _IMAGE_PIXELS, index),
        rows=plan.rows,
        cols=plan.cols,
        pixel_spacing=plan.spacing,
        study_date=str(date).replace("-", ""),
        phi={
            "PatientName": patient.name,
            "PatientBirthDate": patient.birth_date,
            "PatientAddress": patient.address,
            "AccessionNumber": f"SYN{accession % 10**9:09d}",
            "StudyID": f"S{patient.number:05d}{followup:03d}",
            "ReferringPhysicianName": str(irng.choice(_STAFF)),
            "OperatorsName": str(irng.choice(_OPERATORS)),
        },
    )
