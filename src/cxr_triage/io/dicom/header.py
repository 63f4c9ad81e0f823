"""DICOM header values: typed conversion, PHI-free metadata, identifiers, the pixel header.

Every header element the decoder and the grey-level pipeline use is converted once, in
:func:`pixel_header`; an IS/DS that is no number, a wrong VR, several values where the standard
allows one, or an inconsistent Image Pixel module is ``corrupt_header``, naming the element.
LUT data must hold the entries their descriptor declares (8-bit entries packed into bytes are
read as such); Pixel Padding Value / Pixel Padding Range Limit become a range of stored values
(PS3.3 C.7.5.1.1.2). Metadata (:func:`dicom_meta`) never raises: an unreadable descriptive
element counts as absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from cxr_triage.errors import CorruptHeaderError, UnsupportedImageTypeError
from cxr_triage.io.dicom.parse import REEXPORT, exception_text
from cxr_triage.io.records import Identifiers, ImageMeta

__all__ = [
    "Lut",
    "PixelHeader",
    "dicom_identifiers",
    "dicom_meta",
    "header_int",
    "header_text",
    "parse_age",
    "pixel_header",
]


# -- typed values -------------------------------------------------------------------------------


def _element(ds: Dataset, keyword: str) -> object:
    try:
        return ds.get(keyword)
    except MemoryError:
        raise
    except Exception as exc:  # pydicom converts on access: wrong lengths, bad VRs, charsets
        raise CorruptHeaderError(
            f"{keyword} cannot be read ({exception_text(exc)}); {REEXPORT}"
        ) from exc


def _single(value: object, keyword: str, *, first: bool = False) -> object:
    if isinstance(value, Sequence | Dataset):
        raise CorruptHeaderError(f"{keyword} is a sequence, not a value; {REEXPORT}")
    if isinstance(value, MultiValue | list | tuple):
        if len(value) == 0:
            return None
        if len(value) > 1 and not first:
            raise CorruptHeaderError(
                f"{keyword} has {len(value)} values where the standard allows one; {REEXPORT}"
            )
        return value[0]
    return value


def header_int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """An IS/US/SS element as int; ``default`` when absent or empty.

    Raises:
        CorruptHeaderError: unreadable, several values, or not an integer.
    """
    value = _single(_element(ds, keyword), keyword)
    if value is None or value == "":
        return default
    try:
        if isinstance(value, bytes | bool):
            raise TypeError
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float) and not number.is_integer():
            raise ValueError
        return int(number)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptHeaderError(
            f"{keyword} is {str(value)[:40]!r}, not an integer; {REEXPORT}"
        ) from exc


def _header_float(ds: Dataset, keyword: str, *, first: bool = False) -> float | None:
    value = _single(_element(ds, keyword), keyword, first=first)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bytes | bool):
            raise TypeError
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptHeaderError(
            f"{keyword} is {str(value)[:40]!r}, not a number; {REEXPORT}"
        ) from exc
    if not math.isfinite(number):
        raise CorruptHeaderError(f"{keyword} is {number}, not a finite number; {REEXPORT}")
    return number


def header_text(ds: Dataset, keyword: str) -> str:
    """A code string, stripped and upper-case ("" when absent); the first of several values.

    Raises:
        CorruptHeaderError: unreadable, or a sequence.
    """
    value = _single(_element(ds, keyword), keyword, first=True)
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip().upper()


# -- metadata and identifiers (never raise) ----------------------------------------------------


def _lenient(read, ds: Dataset, keyword: str, default):  # noqa: ANN001, ANN202
    """A descriptive element for metadata: unreadable values count as absent."""
    try:
        value = read(ds, keyword)
    except CorruptHeaderError:
        return default
    return default if value is None else value


def _lenient_text(ds: Dataset, keyword: str, *, upper: bool = True) -> str:
    try:
        value = _single(ds.get(keyword), keyword, first=True)
    except Exception:  # noqa: BLE001 - metadata only: an unreadable element is an absent one
        return ""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="replace")
    text = str(value).strip()
    return text.upper() if upper else text


def parse_age(value: object) -> float | None:
    """DICOM AgeString (``nnnD|W|M|Y``) to years; None when absent or malformed."""
    text = str(value or "").strip().upper()
    if len(text) < 2 or not text[:-1].isdigit():
        return None
    per_year = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}.get(text[-1])
    return None if per_year is None else round(int(text[:-1]) / per_year, 2)


def _syntax_name(ds: Dataset) -> str:
    try:
        ts = ds.file_meta.get("TransferSyntaxUID")
        return (uids.UID(ts).name or str(ts)) if ts else ""
    except Exception:  # noqa: BLE001 - metadata only
        return ""


def dicom_meta(ds: Dataset) -> ImageMeta:
    """PHI-free metadata of a parsed dataset (never names, dates, accession or raw IDs).

    Never raises: an element that cannot be converted is reported as absent.
    """
    sex = _lenient_text(ds, "PatientSex")
    return ImageMeta(
        format="dicom",
        rows=_lenient(header_int, ds, "Rows", 0),
        cols=_lenient(header_int, ds, "Columns", 0),
        modality=_lenient_text(ds, "Modality"),
        view_position=_lenient_text(ds, "ViewPosition"),
        photometric=_lenient_text(ds, "PhotometricInterpretation"),
        bits_stored=_lenient(header_int, ds, "BitsStored", 0),
        frames=max(_lenient(header_int, ds, "NumberOfFrames", 1), 1),
        samples_per_pixel=_lenient(header_int, ds, "SamplesPerPixel", 1),
        transfer_syntax=_syntax_name(ds),
        manufacturer=_lenient_text(ds, "Manufacturer", upper=False),
        body_part=_lenient_text(ds, "BodyPartExamined"),
        sex=sex if sex in ("M", "F") else "",
        age_years=parse_age(_lenient_text(ds, "PatientAge")),
        burned_in_annotation=_lenient_text(ds, "BurnedInAnnotation"),
    )


def dicom_identifiers(ds: Dataset) -> Identifiers:
    """Raw patient and study identifiers (PHI: kept apart from the metadata); never raises."""
    return Identifiers(
        patient_id=_lenient_text(ds, "PatientID", upper=False),
        study_uid=_lenient_text(ds, "StudyInstanceUID", upper=False),
        sop_instance_uid=_lenient_text(ds, "SOPInstanceUID", upper=False),
    )


# -- the pixel header -------------------------------------------------------------------------


@dataclass(frozen=True)
class Lut:
    """A Modality or VOI LUT (PS3.3 C.11.1.1 / C.11.2.1.1): entries and first mapped value."""

    table: np.ndarray
    first: int


@dataclass(frozen=True)
class PixelHeader:
    """Every header value the decoder and the grey-level pipeline use, converted once."""

    rows: int
    cols: int
    frames: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    slope: float
    intercept: float
    window: tuple[float, float] | None  # (lower, upper) after the modality LUT
    center_width: tuple[float, float] | None  # the window as written, for SIGMOID
    voi_function: str
    modality_lut: Lut | None
    voi_lut: Lut | None
    padding: tuple[int, int] | None  # inclusive range of stored values that are padding
    presentation_shape: str

    @property
    def invert(self) -> bool:
        return self.photometric == "MONOCHROME1"


def pixel_header(ds: Dataset) -> PixelHeader:
    """Convert and check the Image Pixel, Modality LUT and VOI LUT values (after the judgement
    of modality, pixel data presence and size).

    Raises:
        CorruptHeaderError: a value is unreadable, missing or inconsistent.
        UnsupportedImageTypeError: a pixel encoding this reader does not decode.
    """
    allocated, stored, signed, samples = _bit_layout(ds)
    slope = _header_float(ds, "RescaleSlope")
    intercept = _header_float(ds, "RescaleIntercept")
    center_width = _center_width(ds)
    function = header_text(ds, "VOILUTFunction")
    if slope == 0:
        raise CorruptHeaderError(
            f"RescaleSlope is 0, which maps every pixel to one value; {REEXPORT}"
        )
    return PixelHeader(
        rows=header_int(ds, "Rows", 0),
        cols=header_int(ds, "Columns", 0),
        frames=max(header_int(ds, "NumberOfFrames", 1), 1),
        samples=samples,
        photometric=header_text(ds, "PhotometricInterpretation"),
        bits_allocated=allocated,
        bits_stored=stored,
        signed=signed,
        slope=1.0 if slope is None else slope,
        intercept=0.0 if intercept is None else intercept,
        window=_window(center_width, function),
        center_width=center_width,
        voi_function=function,
        modality_lut=_lut(ds, "ModalityLUTSequence", signed),
        voi_lut=_lut(ds, "VOILUTSequence", signed),
        padding=_padding(ds, allocated, stored, signed),
        presentation_shape=header_text(ds, "PresentationLUTShape"),
    )


def _bit_layout(ds: Dataset) -> tuple[int, int, bool, int]:
    """BitsAllocated, BitsStored, signedness and SamplesPerPixel, checked for consistency."""
    values = {}
    for keyword in ("BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel"):
        values[keyword] = header_int(ds, keyword)
        if values[keyword] is None:
            raise CorruptHeaderError(f"the Image Pixel module has no {keyword}; {REEXPORT}")
    allocated, stored = values["BitsAllocated"], values["BitsStored"]
    if allocated not in (8, 16, 32):
        raise UnsupportedImageTypeError(
            f"BitsAllocated is {allocated}; a radiograph has 8, 16 or 32 bits per pixel: "
            f"{REEXPORT}"
        )
    if not 1 <= stored <= allocated:
        raise CorruptHeaderError(
            f"BitsStored is {stored} with BitsAllocated {allocated}; {REEXPORT}"
        )
    high_bit = header_int(ds, "HighBit", stored - 1)
    if high_bit != stored - 1:
        raise UnsupportedImageTypeError(
            f"HighBit is {high_bit} with BitsStored {stored}: pixel values are not stored "
            f"right-aligned, which this reader does not decode; {REEXPORT}"
        )
    if values["PixelRepresentation"] not in (0, 1):
        raise CorruptHeaderError(
            f"PixelRepresentation is {values['PixelRepresentation']} (0 or 1); {REEXPORT}"
        )
    return allocated, stored, values["PixelRepresentation"] == 1, values["SamplesPerPixel"]


def _center_width(ds: Dataset) -> tuple[float, float] | None:
    """The first VOI window (center, width); None when absent, empty (Type 2) or unusable."""
    center = _header_float(ds, "WindowCenter", first=True)
    width = _header_float(ds, "WindowWidth", first=True)
    if center is None or width is None or width <= 0:
        return None
    return center, width


def _window(center_width: tuple[float, float] | None, function: str):  # noqa: ANN202
    """The window as (lower, upper) bounds after the modality LUT."""
    if center_width is None:
        return None
    center, width = center_width
    if function == "LINEAR_EXACT":
        return center - width / 2, center + width / 2
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR): the -0.5 and (w - 1) terms centre integer windows.
    return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2


def _little_endian(ds: Dataset) -> bool:
    ts = ds.file_meta.get("TransferSyntaxUID")
    return ts != uids.ExplicitVRBigEndian


def _lut(ds: Dataset, keyword: str, signed: bool) -> Lut | None:
    """The first item of a LUT sequence, checked against its descriptor."""
    sequence = _element(ds, keyword)
    if not sequence:
        return None
    if not isinstance(sequence, Sequence):
        raise CorruptHeaderError(f"{keyword} is not a sequence; {REEXPORT}")
    item = sequence[0]
    where = f"{keyword} item 1"
    entries, first, bits = _lut_descriptor(item, where, signed)
    table = _lut_table(ds, _element(item, "LUTData"), entries, bits, where)
    if table.size and (int(table.max()) >= 2**bits or int(table.min()) < 0):
        raise CorruptHeaderError(
            f"{where}: LUTData values reach {int(table.max())}, beyond the {bits} bits its "
            f"descriptor declares (misencoded LUT); {REEXPORT}"
        )
    return Lut(table=table.astype(np.int64), first=first)


def _lut_descriptor(item: Dataset, where: str, signed: bool) -> tuple[int, int, int]:
    """LUTDescriptor as (entries, first mapped value, bits per entry)."""
    descriptor = _element(item, "LUTDescriptor")
    if not isinstance(descriptor, MultiValue | list) or len(descriptor) != 3:
        raise CorruptHeaderError(f"{where} has no 3-valued LUTDescriptor; {REEXPORT}")
    try:
        entries, first, bits = (int(v) for v in descriptor)
    except (TypeError, ValueError) as exc:
        raise CorruptHeaderError(f"{where}: LUTDescriptor is not 3 integers; {REEXPORT}") from exc
    entries = entries or 65536  # PS3.3 C.11.1.1: 0 means 2^16 entries
    if signed and first >= 32768:  # first mapped value is SS for signed pixel data
        first -= 65536
    if not 8 <= bits <= 16:
        raise CorruptHeaderError(
            f"{where}: LUTDescriptor declares {bits} bits per entry (8 to 16 allowed); {REEXPORT}"
        )
    return entries, first, bits


def _lut_table(ds: Dataset, data: object, entries: int, bits: int, where: str) -> np.ndarray:
    """LUTData as an array of exactly ``entries`` values (OW bytes, or US/SS values)."""
    if isinstance(data, bytes):
        if len(data) >= 2 * entries:
            return np.frombuffer(data, dtype="<u2" if _little_endian(ds) else ">u2")[:entries]
        if bits == 8 and len(data) in (entries, entries + 1):
            return np.frombuffer(data, dtype=np.uint8)[:entries]  # 8-bit entries, packed
        raise CorruptHeaderError(
            f"{where}: LUTData holds {len(data)} bytes but the descriptor declares "
            f"{entries} entries of {bits} bits; the LUT is narrower than it says: "
            f"{REEXPORT}"
        )
    if isinstance(data, MultiValue | list | int):
        values = [data] if isinstance(data, int) else list(data)
        if len(values) != entries:
            raise CorruptHeaderError(
                f"{where}: LUTData holds {len(values)} entries but the descriptor declares "
                f"{entries}; {REEXPORT}"
            )
        try:
            return np.asarray(values, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CorruptHeaderError(f"{where}: LUTData is not integers; {REEXPORT}") from exc
    raise CorruptHeaderError(f"{where} has no LUTData; {REEXPORT}")


def _padding(ds: Dataset, bits_allocated: int, bits_stored: int, signed: bool):  # noqa: ANN202
    """Stored values that are padding (PS3.3 C.7.5.1.1.2), as an inclusive range, or None."""
    value = header_int(ds, "PixelPaddingValue")
    if value is None:
        return None
    limit = header_int(ds, "PixelPaddingRangeLimit", value)

    def stored(v: int) -> int:
        # US or SS by Pixel Representation; an implicit-VR file may give either reading.
        if signed:
            v &= 2**bits_allocated - 1
            return v - 2**bits_allocated if v >= 2 ** (bits_allocated - 1) else v
        # Decoded unsigned values keep only Bits Stored bits (pydicom masks the rest), so the
        # padding value is compared the same way (e.g. 0xFFFF padding in a 12-bit image).
        return v & (2**bits_stored - 1)

    low, high = sorted((stored(value), stored(limit)))
    return low, high
