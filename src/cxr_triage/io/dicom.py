"""DICOM radiographs: header checks, decoding, modality/VOI LUT, MONOCHROME1 inversion.

Rules (each refusal raises an :class:`~cxr_triage.errors.InvalidImageError` subclass):

- Modality must be one of ``ImageLimits.allowed_modalities`` (CR, DX by default): CT, MR, NM,
  US, SR, RT*, OT/SC secondary captures... are refused, since the model only knows projection
  chest radiographs. A filled BodyPartExamined other than a chest value is refused too.
- Multi-frame images and colour images (SamplesPerPixel > 1) are refused: a chest radiograph
  is one grey frame, and guessing which frame or channel to use would hide a routing error.
- Only MONOCHROME1 and MONOCHROME2 are accepted; MONOCHROME1 is inverted after the VOI step
  (DICOM PS3.3 C.11.2: the VOI output is displayed inverted for MONOCHROME1).
- Intensity: the Modality LUT (RescaleSlope/Intercept) and the first VOI window are fused into
  one float32 multiply-add (pydicom's ``apply_voi_lut`` is several times slower than decoding);
  a VOI LUT Sequence, a Modality LUT Sequence or a SIGMOID window go through pydicom's own
  implementation. Without any window the full range of the stored values is used.
- Compressed transfer syntaxes are decoded by pydicom's plugins (pylibjpeg, pyjpegls, gdcm);
  a syntax with no installed decoder is refused with the packages to install.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from cxr_triage.errors import (
    CodecUnavailableError,
    DecompressionBombError,
    ImageTooLargeError,
    InvalidImageError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedPixelDataError,
    UnsupportedImageTypeError,
    UnsupportedModalityError,
)
from cxr_triage.io.records import DecodedImage, Identifiers, ImageLimits, ImageMeta

__all__ = ["check_dicom", "dicom_meta", "parse_age", "read_dicom", "read_dicom_dataset"]

log = logging.getLogger(__name__)

_MODALITY_NAMES = {
    "CT": "CT",
    "MR": "MR",
    "NM": "nuclear medicine",
    "PT": "PET",
    "US": "ultrasound",
    "SR": "a structured report (no image)",
    "OT": "'other' (often a secondary capture or photo)",
    "SC": "a secondary capture",
    "MG": "mammography",
    "XA": "angiography",
    "RF": "fluoroscopy",
    "KO": "a key object selection (no image)",
    "PR": "a presentation state (no image)",
}
_CODEC_HINT = (
    "install a decoder plugin (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
    "pyjpegls or python-gdcm), or re-send the study uncompressed (Explicit VR Little Endian)"
)


def read_dicom_dataset(source: str | os.PathLike[str] | bytes) -> Dataset:
    """Parse a DICOM file (with pixel data, not yet decoded).

    Raises:
        NotAnImageError: the content is not DICOM.
        TruncatedPixelDataError: the file ends before its data set could be read.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        ds = pydicom.dcmread(fp)
    except InvalidDicomError as exc:
        raise NotAnImageError(
            "not a DICOM file (no 'DICM' prefix or file meta header); send a DICOM Part 10 file, "
            "a PNG or a JPEG"
        ) from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise NotAnImageError(
            f"the DICOM file cannot be parsed ({type(exc).__name__}: {exc}); "
            "it is probably truncated or corrupt: re-export it"
        ) from exc
    if len(ds) == 0:
        # pydicom only warns when the file ends inside an element (typically encapsulated pixel
        # data cut off in transfer) and returns an empty data set: no modality, no pixels.
        raise TruncatedPixelDataError(
            "the DICOM file ends before its data set could be read (cut off in transfer?); "
            "send it again"
        )
    return ds


def parse_age(value: object) -> float | None:
    """DICOM AgeString (``nnnD|W|M|Y``) to years; None when absent or malformed."""
    text = str(value or "").strip().upper()
    if len(text) < 2 or not text[:-1].isdigit():
        return None
    per_year = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}.get(text[-1])
    return None if per_year is None else round(int(text[:-1]) / per_year, 2)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if value else ""
    return str(value).strip()


def dicom_meta(ds: Dataset) -> ImageMeta:
    """PHI-free metadata of a parsed dataset (never names, dates, accession or raw IDs)."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    sex = _text(ds, "PatientSex").upper()
    return ImageMeta(
        format="dicom",
        rows=int(ds.get("Rows", 0) or 0),
        cols=int(ds.get("Columns", 0) or 0),
        modality=_text(ds, "Modality").upper(),
        view_position=_text(ds, "ViewPosition").upper(),
        photometric=_text(ds, "PhotometricInterpretation").upper(),
        bits_stored=int(ds.get("BitsStored", 0) or 0),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        transfer_syntax=ts.name if ts is not None else "",
        manufacturer=_text(ds, "Manufacturer"),
        body_part=_text(ds, "BodyPartExamined").upper(),
        sex=sex if sex in ("M", "F") else "",
        age_years=parse_age(ds.get("PatientAge")),
    )


def _identifiers(ds: Dataset) -> Identifiers:
    return Identifiers(
        patient_id=_text(ds, "PatientID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
    )


def check_dicom(ds: Dataset, meta: ImageMeta, limits: ImageLimits, file_size: int) -> None:
    """Refuse what is not a single-frame grey projection chest radiograph, before decoding.

    Raises:
        InvalidImageError: a subclass naming the first rule the file breaks.
    """
    if meta.modality not in limits.allowed_modalities:
        what = _MODALITY_NAMES.get(meta.modality, meta.modality or "missing")
        raise UnsupportedModalityError(
            f"modality is {what}, not a projection radiograph "
            f"({'/'.join(limits.allowed_modalities)}); send a chest X-ray (CR or DX)"
        )
    if meta.body_part and meta.body_part not in limits.allowed_body_parts:
        raise UnsupportedModalityError(
            f"BodyPartExamined is {meta.body_part}, not the chest; send a chest X-ray"
        )
    if "PixelData" not in ds:
        raise NoPixelDataError(
            "the DICOM file has no pixel data (header only); send the image object itself"
        )
    if meta.frames > 1:
        raise UnsupportedImageTypeError(
            f"multi-frame DICOM ({meta.frames} frames); a chest radiograph is one frame: "
            "export the frame to be scored as its own single-frame object"
        )
    if meta.samples_per_pixel != 1 or meta.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageTypeError(
            f"colour or unsupported photometric interpretation ({meta.photometric or 'missing'}, "
            f"{meta.samples_per_pixel} samples per pixel); radiographs must be MONOCHROME1 or "
            "MONOCHROME2"
        )
    if meta.rows <= 0 or meta.cols <= 0:
        raise InvalidImageError("the DICOM header has no Rows/Columns", reason="corrupt_header")
    _check_size(meta.rows * meta.cols, meta.rows * meta.cols * 2, file_size, limits)
    ts = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise CodecUnavailableError(
            f"no decoder exists for transfer syntax {ts.name or ts}; re-send the study "
            "uncompressed (Explicit VR Little Endian) or as JPEG/JPEG 2000/JPEG-LS/RLE"
        ) from exc
    if not decoder.is_available:
        raise CodecUnavailableError(f"no decoder installed for {ts.name}: {_CODEC_HINT}")
    if decoder.is_native:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        expected = meta.rows * meta.cols * bits // 8
        if len(ds.PixelData) < expected:
            raise TruncatedPixelDataError(
                f"pixel data is truncated ({len(ds.PixelData)} of {expected} bytes); the file was "
                "cut off in transfer: send it again"
            )


def _check_size(n_pixels: int, decoded_bytes: int, file_size: int, limits: ImageLimits) -> None:
    if n_pixels <= limits.max_pixels:
        return
    if file_size > 0 and decoded_bytes > limits.bomb_ratio * file_size:
        raise DecompressionBombError(
            f"declares {n_pixels:,} pixels from only {file_size:,} bytes (a decompression bomb); "
            "send the original radiograph"
        )
    raise ImageTooLargeError(
        f"{n_pixels:,} pixels exceeds the limit of {limits.max_pixels:,}; downsample the image "
        "or raise the configured max_pixels"
    )


def _window(ds: Dataset) -> tuple[float, float] | None:
    """The first linear VOI window as (lower, upper) stored-value bounds after the modality LUT."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = ds.WindowCenter, ds.WindowWidth
    if isinstance(center, pydicom.multival.MultiValue):
        center = center[0] if center else None
    if isinstance(width, pydicom.multival.MultiValue):
        width = width[0] if width else None
    if center is None or width is None:  # present but empty (Type 2 style): no window
        return None
    center, width = float(center), float(width)
    if width <= 0:
        return None
    if _text(ds, "VOILUTFunction").upper() == "LINEAR_EXACT":
        return center - width / 2, center + width / 2
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR): the -0.5 and (w - 1) terms centre integer windows.
    return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2


def _to_display(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored values -> float32 in [0, 1], MONOCHROME2 convention."""
    invert = _text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1"
    window = _window(ds)
    fast = (
        "ModalityLUTSequence" not in ds
        and "VOILUTSequence" not in ds
        and _text(ds, "VOILUTFunction").upper() != "SIGMOID"
    )
    if fast:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if window is None:
            lo, hi = float(stored.min()), float(stored.max())
            lower, upper = lo * slope + intercept, hi * slope + intercept
            lower, upper = min(lower, upper), max(lower, upper)
        else:
            lower, upper = window
        span = max(upper - lower, 1e-6)
        # value = (stored * slope + intercept - lower) / span, fused into one multiply-add;
        # MONOCHROME1 folds the inversion 1 - value into the same coefficients.
        a, b = slope / span, (intercept - lower) / span
        if invert:
            a, b = -a, 1.0 - b
        out = stored.astype(np.float32)
        out *= np.float32(a)
        out += np.float32(b)
        np.clip(out, 0.0, 1.0, out=out)
        return out
    values = apply_modality_lut(stored, ds)
    if "VOILUTSequence" in ds and values.dtype.kind == "f":
        # A LUT is indexed by integers: pydicom warns on (and truncates) the float64 that any
        # RescaleSlope/Intercept produces, so round to the nearest entry instead.
        values = np.rint(values).astype(np.int64)
    if "VOILUTSequence" in ds or window is not None:
        values = apply_voi_lut(values, ds, index=0)
    values = values.astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    out = (values - lo) / max(hi - lo, 1e-6)
    return 1.0 - out if invert else out


def read_dicom(
    source: str | os.PathLike[str] | bytes,
    limits: ImageLimits = ImageLimits(),
    dataset: Dataset | None = None,
) -> DecodedImage:
    """Read a DICOM chest radiograph.

    Args:
        source: a path or the file's bytes.
        limits: what to refuse before decoding.
        dataset: an already parsed dataset of ``source`` (avoids parsing twice).

    Returns:
        The decoded image with PHI-free metadata; raw identifiers are kept apart.

    Raises:
        InvalidImageError: a subclass saying why the file cannot be used.
    """
    ds = dataset if dataset is not None else read_dicom_dataset(source)
    meta = dicom_meta(ds)
    file_size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    check_dicom(ds, meta, limits, file_size)
    try:
        stored = ds.pixel_array
    except ValueError as exc:
        if "less than expected" in str(exc) or "truncat" in str(exc).lower():
            raise TruncatedPixelDataError(
                f"pixel data is truncated ({exc}); the file was cut off in transfer: send it again"
            ) from exc
        raise InvalidImageError(
            f"pixel data cannot be decoded ({exc}); re-export the image",
            reason="corrupt_pixel_data",
        ) from exc
    except (RuntimeError, OSError, AttributeError, TypeError, KeyError) as exc:
        raise InvalidImageError(
            f"pixel data cannot be decoded ({type(exc).__name__}: {exc}); re-export the image "
            "or send it uncompressed",
            reason="corrupt_pixel_data",
        ) from exc
    if stored.ndim != 2:
        raise UnsupportedImageTypeError(
            f"decoded pixel array has shape {stored.shape}; expected one grey frame"
        )
    return DecodedImage(pixels=_to_display(ds, stored), meta=meta, identifiers=_identifiers(ds))
