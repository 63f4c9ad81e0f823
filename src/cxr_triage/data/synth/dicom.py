"""Writing projection radiographs as DICOM: the one writer of the generator, tests and benchmarks.

:func:`image_dataset` builds a single-image DX or CR dataset (file meta, SOP class from the
modality, UIDs, the Image Pixel module from the array's shape and dtype) plus any further
attributes; :func:`write_dicom` saves it. :func:`write_synthetic_image` is the generator's use:
fake but realistic PHI, the site's acquisition headers and a window over the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from cxr_triage.data.synth.cohort import ImageSpec
from cxr_triage.data.synth.sites import SiteProfile

__all__ = ["image_dataset", "sop_class_for", "write_dicom", "write_synthetic_image"]

_PIXEL_DTYPES = (np.uint8, np.int8, np.uint16, np.int16)


def sop_class_for(modality: str) -> str:
    """CR Image Storage for ``"CR"``, else Digital X-Ray Image Storage - For Presentation."""
    if modality == "CR":
        return ComputedRadiographyImageStorage
    return DigitalXRayImageStorageForPresentation


def image_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    samples_per_pixel: int = 1,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    attributes: Mapping[str, object] | None = None,
) -> Dataset:
    """Build a DICOM dataset (Explicit VR Little Endian) holding one radiograph.

    Args:
        pixels: stored values, uint8/int8/uint16/int16, shape ``(rows, cols)``, or
            ``(frames, rows, cols)`` for a multi-frame image, with a trailing axis of 3 when
            ``samples_per_pixel`` is 3 (interleaved colour).
        modality: DICOM ``Modality``; also picks the SOP class (see :func:`sop_class_for`).
        photometric: ``PhotometricInterpretation``.
        bits_stored: ``BitsStored`` (default: all bits of the dtype); ``BitsAllocated`` and
            ``PixelRepresentation`` follow the dtype.
        samples_per_pixel: 1 (grey) or 3 (colour, ``PlanarConfiguration`` 0).
        sop_class_uid: overrides the modality's SOP class.
        sop_instance_uid: default a new random UID, as for the study and series UIDs.
        study_instance_uid: ``StudyInstanceUID``.
        series_instance_uid: ``SeriesInstanceUID``.
        attributes: further ``{keyword: value}`` set in this order after the pixel module
            (e.g. ``PatientID``, ``ViewPosition``, ``WindowCenter``).

    Returns:
        The dataset with ``file_meta`` and ``PixelData``, ready for ``save_as``.

    Raises:
        TypeError: the pixel dtype cannot be stored as such.
        ValueError: the shape does not fit ``samples_per_pixel``.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype.type not in _PIXEL_DTYPES:
        raise TypeError(f"pixels must be 8- or 16-bit integers, got {pixels.dtype}")
    grey_ndim = pixels.ndim - (1 if samples_per_pixel > 1 else 0)
    if grey_ndim not in (2, 3) or (
        samples_per_pixel > 1 and pixels.shape[-1] != samples_per_pixel
    ):
        raise ValueError(
            f"pixels of shape {pixels.shape} do not hold {samples_per_pixel}-sample images"
        )
    sop_class = sop_class_uid or sop_class_for(modality)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.Modality = modality
    _set_pixel_module(ds, pixels, photometric, bits_stored, samples_per_pixel, grey_ndim)
    for keyword, value in (attributes or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    return ds


def _set_pixel_module(
    ds: Dataset,
    pixels: np.ndarray,
    photometric: str,
    bits_stored: int | None,
    samples_per_pixel: int,
    grey_ndim: int,
) -> None:
    allocated = pixels.dtype.itemsize * 8
    bits = allocated if bits_stored is None else bits_stored
    if samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    ds.SamplesPerPixel = samples_per_pixel
    ds.PhotometricInterpretation = photometric
    frame_shape = pixels.shape[1:] if grey_ndim == 3 else pixels.shape
    ds.Rows, ds.Columns = frame_shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits, bits - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    if grey_ndim == 3 and pixels.shape[0] > 1:
        ds.NumberOfFrames = pixels.shape[0]


def write_dicom(path: str | Path, pixels: np.ndarray, **options: object) -> Path:
    """Write :func:`image_dataset` ``(pixels, **options)`` to ``path``; returns the path."""
    path = Path(path)
    image_dataset(pixels, **options).save_as(path, enforce_file_format=True)  # type: ignore[arg-type]
    return path


def _uid(*parts: object) -> str:
    """Deterministic DICOM UID from the given parts."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_synthetic_image(
    path: Path, pixels: np.ndarray, spec: ImageSpec, site: SiteProfile, seed: int
) -> None:
    """Write one generated image as a DX or CR file with fake PHI and no timestamps.

    UIDs are derived from ``(seed, site, patient, follow-up)``, so the file is a pure function
    of the generator's arguments.
    """
    key = ("cxr-triage-synth", seed, site.name, spec.patient_id, spec.followup)
    write_dicom(
        path,
        pixels,
        modality=site.modality,
        photometric=site.photometric,
        bits_stored=site.bits_stored,
        sop_class_uid=site.sop_class_uid,
        sop_instance_uid=_uid(*key, "sop"),
        study_instance_uid=_uid(*key, "study"),
        series_instance_uid=_uid(*key, "series"),
        attributes={**_study_attributes(spec, site), **_display_attributes(pixels, site, spec)},
    )


def _study_attributes(spec: ImageSpec, site: SiteProfile) -> dict[str, object]:
    """Study, equipment and (fake) patient attributes."""
    attributes: dict[str, object] = {
        "StudyDate": spec.study_date,
        "SeriesDate": spec.study_date,
        "ContentDate": spec.study_date,
        "StudyID": spec.phi["StudyID"],
        "AccessionNumber": spec.phi["AccessionNumber"],
        "SeriesNumber": 1,
        "InstanceNumber": 1,
        "ImageType": ["ORIGINAL", "PRIMARY"],
    }
    if site.modality == "DX":
        attributes["PresentationIntentType"] = "FOR PRESENTATION"
    return attributes | {
        "Manufacturer": site.manufacturer,
        "ManufacturerModelName": site.model_name,
        "InstitutionName": site.institution,
        "StationName": site.name,
        "ReferringPhysicianName": spec.phi["ReferringPhysicianName"],
        "OperatorsName": spec.phi["OperatorsName"],
        "PatientName": spec.phi["PatientName"],
        "PatientID": spec.patient_id,
        "PatientBirthDate": spec.phi["PatientBirthDate"],
        "PatientSex": spec.sex,
        "PatientAge": f"{min(spec.age, 999):03d}Y",
        "PatientAddress": spec.phi["PatientAddress"],
        "BodyPartExamined": "CHEST",
        "ViewPosition": spec.view,
        "SeriesDescription": f"Chest {spec.view} (synthetic)",
    }


def _display_attributes(pixels: np.ndarray, site: SiteProfile, spec: ImageSpec) -> dict:
    """Pixel spacing, modality LUT and a window over the body's useful range."""
    # Robust percentiles of the modality values.
    lo, hi = np.percentile(pixels[::4, ::4], [1.0, 99.0])
    lo = float(lo) * site.rescale_slope + site.rescale_intercept
    hi = float(hi) * site.rescale_slope + site.rescale_intercept
    return {
        "PixelSpacing": [spec.pixel_spacing, spec.pixel_spacing],
        "ImagerPixelSpacing": [spec.pixel_spacing, spec.pixel_spacing],
        "RescaleSlope": site.rescale_slope,
        "RescaleIntercept": site.rescale_intercept,
        "RescaleType": "US",
        "WindowCenter": round((lo + hi) / 2, 1),
        "WindowWidth": round(max(hi - lo, 1.0), 1),
    }
