"""Sites: how each (fictional) hospital acquires and stores chest radiographs.

The three training presets differ in manufacturer, exposure, contrast, noise, resolution, bit
depth and photometric interpretation; ``new_hospital`` is a clearly shifted acquisition for drift
demos; any other name gets a deterministic profile derived from the name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
)

from cxr_triage.errors import ConfigError

__all__ = ["SITE_PRESETS", "SiteProfile", "name_hash", "site_profile"]

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


def name_hash(text: str) -> int:
    """Stable 63-bit integer from a string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


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
    def sop_class_uid(self) -> UID:
        """DICOM SOP class for this site's modality (DX For Presentation, or CR)."""
        if self.modality == "DX":
            return DigitalXRayImageStorageForPresentation
        return ComputedRadiographyImageStorage


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
    rng = np.random.default_rng(name_hash(name))
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
