"""DICOM radiographs: parsing, header checks, pre-decode guards, decoding, grey-level pipeline.

Rules (each refusal raises an :class:`~cxr_triage.errors.InvalidImageError` subclass; see the
table of reasons in :mod:`cxr_triage.errors`):

- Parsing never trusts the file: anything pydicom raises becomes ``corrupt_header`` (or
  ``truncated_header`` when the file ends inside its header, ``not_an_image`` when it is not
  DICOM). A Part-10 file without Transfer Syntax UID is read with the encoding pydicom detected
  when its pixel data are native (pydicom/pydicom#2182), refused (``missing_transfer_syntax``)
  when they are encapsulated. A data set without preamble and file meta is DICOM too.
- Every header element the reader uses is converted once, in :func:`_pixel_header`; an IS/DS
  that is no number, a wrong VR, several values where the standard allows one, or an
  inconsistent Image Pixel module is ``corrupt_header``, naming the element.
- Modality must be one of ``ImageLimits.allowed_modalities`` (CR, DX by default); a filled
  BodyPartExamined other than a chest value is refused too. Multi-frame and colour images are
  refused: a chest radiograph is one grey frame. Only MONOCHROME1 and MONOCHROME2 are accepted.
- Memory: Rows x Columns x frames is checked against ``ImageLimits.max_pixels`` before decoding,
  a deflated data set is inflated in bounded steps before pydicom inflates it, and the codec's
  own frame header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, RLE segment table and lengths; see
  :mod:`cxr_triage.io.guards`) must describe exactly the image of the header, so no decoder is
  ever handed a frame larger than what was checked (DICOM PS3.5 8.2, A.4).
- Grey levels: Modality LUT (RescaleSlope/Intercept, or a Modality LUT Sequence), then the first
  VOI window or VOI LUT, then MONOCHROME1 inversion (PS3.3 C.11.2). The common case (rescale and
  a linear window) is one fused float32 multiply-add. Without a window the range is that of the
  stored values, except Pixel Padding Value / Pixel Padding Range Limit, which never take part
  in it and come out black (PS3.3 C.7.5.1.1.2). LUT data must hold the entries their
  descriptor declares (8-bit entries packed into bytes are read as such). MONOCHROME2 with
  Presentation LUT Shape INVERSE is refused (``ambiguous_polarity``): it asks for the inverse of
  what the photometric interpretation says, so which way bone is cannot be told.
- Compressed transfer syntaxes are decoded by pydicom's plugins (pylibjpeg, pyjpegls, gdcm);
  a syntax with no installed decoder is refused with the packages to install.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from pydicom import uid as uids
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_partial  # pinned pydicom 3.0.2
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence

from cxr_triage.errors import (
    AmbiguousPolarityError,
    CodecUnavailableError,
    CorruptHeaderError,
    CorruptPixelDataError,
    DecompressionBombError,
    FrameSizeMismatchError,
    ImageTooLargeError,
    MissingTransferSyntaxError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedHeaderError,
    TruncatedPixelDataError,
    UnsupportedImageTypeError,
    UnsupportedModalityError,
)
from cxr_triage.io.guards import (
    FrameHeader,
    inflated_size,
    j2k_frame_header,
    jpeg_frame_header,
    rle_segment_lengths,
)
from cxr_triage.io.records import DecodedImage, Identifiers, ImageLimits, ImageMeta

__all__ = ["dicom_meta", "parse_age", "read_dicom", "read_dicom_dataset"]

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
_REEXPORT = "re-export the image from the modality or PACS"
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_JPEG_SYNTAXES = frozenset(uids.JPEGTransferSyntaxes) | frozenset(uids.JPEGLSTransferSyntaxes)
_J2K_SYNTAXES = frozenset(uids.JPEG2000TransferSyntaxes)
# Elements whose presence makes a preamble-less data set recognisably DICOM.
_IDENTIFYING_TAGS = (0x00080016, 0x00080018, 0x00080060, 0x0020000D, _PIXEL_DATA)
# Samples per Pixel, Photometric Interpretation, Rows, Columns, Bits Allocated/Stored, High Bit,
# Pixel Representation.
_IMAGE_PIXEL_TYPE1 = (
    0x00280002,
    0x00280004,
    0x00280010,
    0x00280011,
    0x00280100,
    0x00280101,
    0x00280102,
    0x00280103,
)
# Groups a data set (or its file meta) starts with; (0000,xxxx) command elements are left out,
# or a file of zeros would parse as millions of empty elements.
_FIRST_GROUPS = (0x0002, 0x0008)


# -- parsing ------------------------------------------------------------------------------------


def _short(exc: BaseException) -> str:
    """An exception as ``Type: message``, cut to a log- and response-friendly length."""
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class _TooManyElements(Exception):
    pass


def _dcmread(
    fp: BinaryIO, limits: ImageLimits, *, force: bool, stop_before_pixels: bool
) -> Dataset:
    """``pydicom.dcmread`` on a file object (what it does: ``read_partial``), counting the
    top-level elements as they are read so that a header of millions of tiny elements cannot
    take the memory (each costs ~30 times its size in the file once parsed)."""
    count = 0

    def stop_when(tag: int, vr: str | None, length: int) -> bool:
        nonlocal count
        count += 1
        if count > limits.max_header_elements:
            raise _TooManyElements
        return stop_before_pixels and tag in (0x7FE00010, 0x7FE00009, 0x7FE00008)

    fp.seek(0)
    try:
        return read_partial(fp, stop_when, force=force)
    except _TooManyElements as exc:
        raise ImageTooLargeError(
            f"the DICOM header has more than {limits.max_header_elements:,} elements "
            "(max_header_elements); send the original radiograph"
        ) from exc
    except InvalidDicomError as exc:
        raise NotAnImageError(
            "not a DICOM file (no 'DICM' prefix or file meta header); send a DICOM Part 10 file, "
            "a PNG or a JPEG"
        ) from exc
    except (EOFError, struct.error) as exc:  # a length field or tag cut off by the end of file
        raise TruncatedHeaderError(
            f"the file ends inside its DICOM header ({_short(exc)}); it was cut off in "
            "transfer: send it again"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input; all mean this
        raise CorruptHeaderError(
            f"the DICOM header cannot be parsed ({_short(exc)}); it is corrupt: {_REEXPORT}"
        ) from exc


def _file_meta(fp: BinaryIO, size: int, *, preamble: bool) -> tuple[FileMetaDataset, int]:
    """The file meta group and the offset of the data set that follows it."""
    start = 132 if preamble else 0
    fp.seek(start)
    try:
        meta = _read_file_meta_info(fp)
        syntax = meta.get("TransferSyntaxUID")
    except MemoryError:
        raise
    except (EOFError, struct.error) as exc:  # a length field cut off by the end of file
        raise TruncatedHeaderError(
            f"the file ends inside its DICOM file meta header ({_short(exc)}); it was cut off "
            "in transfer: send it again"
        ) from exc
    except Exception as exc:
        # A value cut short fails only when converted: compare with the group length.
        fp.seek(start + 8)
        group_length = int.from_bytes(fp.read(4), "little")
        if size < start + 12 + group_length:
            raise TruncatedHeaderError(
                f"the file ends inside its DICOM file meta header ({_short(exc)}); it was cut "
                "off in transfer: send it again"
            ) from exc
        raise CorruptHeaderError(
            f"the DICOM file meta header cannot be parsed ({_short(exc)}); {_REEXPORT}"
        ) from exc
    if syntax is not None and not isinstance(syntax, str):
        raise CorruptHeaderError(
            f"the Transfer Syntax UID is {type(syntax).__name__}, not a UID; {_REEXPORT}"
        )
    return meta, fp.tell()


def _chunks(fp: BinaryIO, offset: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    fp.seek(offset)
    while block := fp.read(chunk):
        yield block


def _check_inflated_size(fp: BinaryIO, size: int, offset: int, limits: ImageLimits) -> None:
    """Refuse a deflated data set that inflates past the limit, before pydicom inflates it."""
    try:
        inflated = inflated_size(_chunks(fp, offset), limits.max_inflated_bytes)
    except zlib.error as exc:
        raise CorruptHeaderError(
            f"the deflated DICOM data set cannot be inflated ({exc}); {_REEXPORT}"
        ) from exc
    if inflated > limits.max_inflated_bytes:
        raise DecompressionBombError(
            f"the deflated DICOM data set inflates to more than {limits.max_inflated_bytes:,} "
            f"bytes from {size - offset:,} (max_inflated_bytes; a decompression bomb); "
            "send the original image, uncompressed or with image compression"
        )


def _check_complete(ds: Dataset, header_only: bool, stream_size: int | None) -> None:
    """Refuse a data set whose last header element is cut off by the end of the file.

    ``stream_size`` is the length of the byte stream the data set was parsed from (None for a
    deflated one): a few bytes left after the last element are the cut-off tag of the next.
    """
    if len(ds) == 0:
        return
    last = ds.get_item(max(ds.keys()), keep_deferred=True)  # raw: nothing is converted
    if not isinstance(last, RawDataElement) or last.length == _UNDEFINED_LENGTH:
        return
    read = len(last.value) if last.value is not None else last.length
    if read < last.length and (last.tag != _PIXEL_DATA or header_only):
        raise TruncatedHeaderError(
            f"the file ends inside header element ({last.tag.group:04X},{last.tag.elem:04X}) "
            f"({read} of {last.length} bytes), before the pixel data; it was cut off in "
            "transfer: send it again"
        )
    if header_only or stream_size is None or _PIXEL_DATA in ds or last.value_tell is None:
        return
    left = stream_size - (last.value_tell + last.length)
    if 0 < left < 12:  # an element header is 8 or 12 bytes
        raise TruncatedHeaderError(
            f"the file ends inside the element after ({last.tag.group:04X},"
            f"{last.tag.elem:04X}), before the pixel data; it was cut off in transfer: send "
            "it again"
        )


def _check_image_complete(ds: Dataset, meta: FileMetaDataset) -> None:
    """Refuse an image object that ends, at an element boundary, before its Image Pixel module.

    An image storage SOP class (file meta) whose data set has no pixel data and lacks one of
    the Type 1 elements of the Image Pixel module (PS3.3 C.7.6.3) was cut off; a header-only
    export keeps them all.
    """
    if _PIXEL_DATA in ds or all(tag in ds for tag in _IMAGE_PIXEL_TYPE1):
        return
    try:
        name = uids.UID(str(meta.get("MediaStorageSOPClassUID") or "")).name
    except Exception:  # noqa: BLE001 - an unreadable SOP class says nothing either way
        return
    if "Image Storage" not in name:
        return
    last = max(ds.keys())
    raise TruncatedHeaderError(
        f"the file is a {name} but ends after header element ({last.group:04X},"
        f"{last.elem:04X}), inside its Image Pixel module; it was cut off in transfer: send it "
        "again"
    )


@dataclass
class _Parsed:
    ds: Dataset
    pixels_cut: bool  # the file ends inside encapsulated pixel data (header read on its own)


def _starts_like_dataset(data: bytes) -> bool:
    """Whether the bytes open with a tag of a group a DICOM data set starts with."""
    if len(data) < 8:
        return False
    little, big = struct.unpack_from("<H", data)[0], struct.unpack_from(">H", data)[0]
    return little in _FIRST_GROUPS or big in _FIRST_GROUPS


def _parse(fp: BinaryIO, size: int, limits: ImageLimits, *, header_only: bool = False) -> _Parsed:
    """Parse Part-10 DICOM, or a bare data set, from ``fp`` (``size`` bytes long).

    Raises NotAnImageError for anything that is neither.
    """
    fp.seek(0)
    head = fp.read(132)
    part10 = head[128:132] == b"DICM"
    if not part10 and not _starts_like_dataset(head):
        raise NotAnImageError(
            "not an image: the content is neither DICOM, PNG nor JPEG; send one of those formats"
        )
    try:
        meta, offset = _file_meta(fp, size, preamble=part10)
        deflated = meta.get("TransferSyntaxUID") == uids.DeflatedExplicitVRLittleEndian
        if deflated:
            _check_inflated_size(fp, size, offset, limits)
        ds = _dcmread(fp, limits, force=not part10, stop_before_pixels=header_only)
        pixels_cut = False
        if len(ds) == 0 and not header_only:
            # pydicom only warns when the file ends inside an undefined-length element (usually
            # encapsulated pixel data cut off in transfer) and returns an empty data set: read
            # the header on its own to tell a cut in the pixels from a cut in the header.
            ds, pixels_cut = _dcmread(fp, limits, force=not part10, stop_before_pixels=True), True
        if len(ds) == 0:
            raise TruncatedHeaderError(
                "the DICOM file ends before its data set could be read (cut off in transfer?); "
                "send it again"
            )
        _check_complete(ds, header_only or pixels_cut, None if deflated else size)
    except (CorruptHeaderError, TruncatedHeaderError) as exc:
        if part10:
            raise
        raise NotAnImageError(
            "not an image: the content is neither DICOM, PNG nor JPEG (it starts like a DICOM "
            f"data set without preamble, but {exc}); send one of those formats"
        ) from exc
    if part10 and not header_only and not pixels_cut:
        _check_image_complete(ds, meta)
    if not part10 and not any(tag in ds for tag in _IDENTIFYING_TAGS):
        # Old ACR-NEMA style exports are still DICOM; random bytes parsed with force=True are
        # not taken for one unless they name an SOP class/instance, modality, study or pixels.
        raise NotAnImageError(
            "not an image: the content is neither DICOM, PNG nor JPEG; send one of those formats"
        )
    return _Parsed(ds, pixels_cut)


def read_dicom_dataset(
    source: str | os.PathLike[str] | bytes, limits: ImageLimits = ImageLimits()
) -> Dataset:
    """Parse a DICOM file (with pixel data, not yet decoded), with the reader's guards.

    Raises:
        NotAnImageError: the content is not DICOM.
        TruncatedHeaderError: the file ends inside its header or before its data set.
        CorruptHeaderError: pydicom cannot parse it.
        DecompressionBombError: a deflated data set inflates past ``limits.max_inflated_bytes``.
    """
    from cxr_triage.io.images import open_source

    with open_source(source, limits) as (fp, size):
        return _parse(fp, size, limits).ds


# -- header values --------------------------------------------------------------------------------


def _element(ds: Dataset, keyword: str) -> object:
    try:
        return ds.get(keyword)
    except MemoryError:
        raise
    except Exception as exc:  # pydicom converts on access: wrong lengths, bad VRs, charsets
        raise CorruptHeaderError(f"{keyword} cannot be read ({_short(exc)}); {_REEXPORT}") from exc


def _single(value: object, keyword: str, *, first: bool = False) -> object:
    if isinstance(value, Sequence | Dataset):
        raise CorruptHeaderError(f"{keyword} is a sequence, not a value; {_REEXPORT}")
    if isinstance(value, MultiValue | list | tuple):
        if len(value) == 0:
            return None
        if len(value) > 1 and not first:
            raise CorruptHeaderError(
                f"{keyword} has {len(value)} values where the standard allows one; {_REEXPORT}"
            )
        return value[0]
    return value


def _header_int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
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
            f"{keyword} is {str(value)[:40]!r}, not an integer; {_REEXPORT}"
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
            f"{keyword} is {str(value)[:40]!r}, not a number; {_REEXPORT}"
        ) from exc
    if not math.isfinite(number):
        raise CorruptHeaderError(f"{keyword} is {number}, not a finite number; {_REEXPORT}")
    return number


def _header_text(ds: Dataset, keyword: str) -> str:
    value = _single(_element(ds, keyword), keyword, first=True)
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip().upper()


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
        rows=_lenient(_header_int, ds, "Rows", 0),
        cols=_lenient(_header_int, ds, "Columns", 0),
        modality=_lenient_text(ds, "Modality"),
        view_position=_lenient_text(ds, "ViewPosition"),
        photometric=_lenient_text(ds, "PhotometricInterpretation"),
        bits_stored=_lenient(_header_int, ds, "BitsStored", 0),
        frames=max(_lenient(_header_int, ds, "NumberOfFrames", 1), 1),
        samples_per_pixel=_lenient(_header_int, ds, "SamplesPerPixel", 1),
        transfer_syntax=_syntax_name(ds),
        manufacturer=_lenient_text(ds, "Manufacturer", upper=False),
        body_part=_lenient_text(ds, "BodyPartExamined"),
        sex=sex if sex in ("M", "F") else "",
        age_years=parse_age(_lenient_text(ds, "PatientAge")),
    )


def _identifiers(ds: Dataset) -> Identifiers:
    return Identifiers(
        patient_id=_lenient_text(ds, "PatientID", upper=False),
        study_uid=_lenient_text(ds, "StudyInstanceUID", upper=False),
        sop_instance_uid=_lenient_text(ds, "SOPInstanceUID", upper=False),
    )


@dataclass(frozen=True)
class _Lut:
    """A Modality or VOI LUT (PS3.3 C.11.1.1 / C.11.2.1.1): entries and first mapped value."""

    table: np.ndarray
    first: int


@dataclass(frozen=True)
class _PixelHeader:
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
    modality_lut: _Lut | None
    voi_lut: _Lut | None
    padding: tuple[int, int] | None  # inclusive range of stored values that are padding
    presentation_shape: str

    @property
    def invert(self) -> bool:
        return self.photometric == "MONOCHROME1"


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


def _lut(ds: Dataset, keyword: str, signed: bool) -> _Lut | None:
    """The first item of a LUT sequence, checked against its descriptor."""
    sequence = _element(ds, keyword)
    if not sequence:
        return None
    if not isinstance(sequence, Sequence):
        raise CorruptHeaderError(f"{keyword} is not a sequence; {_REEXPORT}")
    item = sequence[0]
    where = f"{keyword} item 1"
    descriptor = _element(item, "LUTDescriptor")
    if not isinstance(descriptor, MultiValue | list) or len(descriptor) != 3:
        raise CorruptHeaderError(f"{where} has no 3-valued LUTDescriptor; {_REEXPORT}")
    try:
        entries, first, bits = (int(v) for v in descriptor)
    except (TypeError, ValueError) as exc:
        raise CorruptHeaderError(f"{where}: LUTDescriptor is not 3 integers; {_REEXPORT}") from exc
    entries = entries or 65536  # PS3.3 C.11.1.1: 0 means 2^16 entries
    if signed and first >= 32768:  # first mapped value is SS for signed pixel data
        first -= 65536
    if not 8 <= bits <= 16:
        raise CorruptHeaderError(
            f"{where}: LUTDescriptor declares {bits} bits per entry (8 to 16 allowed); {_REEXPORT}"
        )
    data = _element(item, "LUTData")
    if isinstance(data, bytes):
        if len(data) >= 2 * entries:
            table = np.frombuffer(data, dtype="<u2" if _little_endian(ds) else ">u2")[:entries]
        elif bits == 8 and len(data) in (entries, entries + 1):
            table = np.frombuffer(data, dtype=np.uint8)[:entries]  # 8-bit entries, packed
        else:
            raise CorruptHeaderError(
                f"{where}: LUTData holds {len(data)} bytes but the descriptor declares "
                f"{entries} entries of {bits} bits; the LUT is narrower than it says: "
                f"{_REEXPORT}"
            )
    elif isinstance(data, MultiValue | list | int):
        values = [data] if isinstance(data, int) else list(data)
        if len(values) != entries:
            raise CorruptHeaderError(
                f"{where}: LUTData holds {len(values)} entries but the descriptor declares "
                f"{entries}; {_REEXPORT}"
            )
        try:
            table = np.asarray(values, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CorruptHeaderError(f"{where}: LUTData is not integers; {_REEXPORT}") from exc
    else:
        raise CorruptHeaderError(f"{where} has no LUTData; {_REEXPORT}")
    if table.size and (int(table.max()) >= 2**bits or int(table.min()) < 0):
        raise CorruptHeaderError(
            f"{where}: LUTData values reach {int(table.max())}, beyond the {bits} bits its "
            f"descriptor declares (misencoded LUT); {_REEXPORT}"
        )
    return _Lut(table=table.astype(np.int64), first=first)


def _padding(ds: Dataset, bits_allocated: int, bits_stored: int, signed: bool):  # noqa: ANN202
    """Stored values that are padding (PS3.3 C.7.5.1.1.2), as an inclusive range, or None."""
    value = _header_int(ds, "PixelPaddingValue")
    if value is None:
        return None
    limit = _header_int(ds, "PixelPaddingRangeLimit", value)

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


def _pixel_header(ds: Dataset) -> _PixelHeader:
    """Convert and check the Image Pixel, Modality LUT and VOI LUT values (after the judgement
    of modality, pixel data presence and size)."""
    values = {}
    for keyword in ("BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel"):
        values[keyword] = _header_int(ds, keyword)
        if values[keyword] is None:
            raise CorruptHeaderError(f"the Image Pixel module has no {keyword}; {_REEXPORT}")
    allocated, stored = values["BitsAllocated"], values["BitsStored"]
    if allocated not in (8, 16, 32):
        raise UnsupportedImageTypeError(
            f"BitsAllocated is {allocated}; a radiograph has 8, 16 or 32 bits per pixel: "
            f"{_REEXPORT}"
        )
    if not 1 <= stored <= allocated:
        raise CorruptHeaderError(
            f"BitsStored is {stored} with BitsAllocated {allocated}; {_REEXPORT}"
        )
    high_bit = _header_int(ds, "HighBit", stored - 1)
    if high_bit != stored - 1:
        raise UnsupportedImageTypeError(
            f"HighBit is {high_bit} with BitsStored {stored}: pixel values are not stored "
            f"right-aligned, which this reader does not decode; {_REEXPORT}"
        )
    if values["PixelRepresentation"] not in (0, 1):
        raise CorruptHeaderError(
            f"PixelRepresentation is {values['PixelRepresentation']} (0 or 1); {_REEXPORT}"
        )
    signed = values["PixelRepresentation"] == 1
    slope = _header_float(ds, "RescaleSlope")
    intercept = _header_float(ds, "RescaleIntercept")
    center_width = _center_width(ds)
    function = _header_text(ds, "VOILUTFunction")
    if slope == 0:
        raise CorruptHeaderError(
            f"RescaleSlope is 0, which maps every pixel to one value; {_REEXPORT}"
        )
    return _PixelHeader(
        rows=_header_int(ds, "Rows", 0),
        cols=_header_int(ds, "Columns", 0),
        frames=max(_header_int(ds, "NumberOfFrames", 1), 1),
        samples=values["SamplesPerPixel"],
        photometric=_header_text(ds, "PhotometricInterpretation"),
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
        presentation_shape=_header_text(ds, "PresentationLUTShape"),
    )


# -- judgement before decoding -------------------------------------------------------------------


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


def _judge_subject(ds: Dataset, limits: ImageLimits, pixels_cut: bool) -> None:
    """Modality, body part and pixel data presence: what the file is, before how it is coded."""
    modality = _header_text(ds, "Modality")
    if modality not in limits.allowed_modalities:
        what = _MODALITY_NAMES.get(modality, modality or "missing")
        raise UnsupportedModalityError(
            f"modality is {what}, not a projection radiograph "
            f"({'/'.join(limits.allowed_modalities)}); send a chest X-ray (CR or DX)"
        )
    body_part = _header_text(ds, "BodyPartExamined")
    if body_part and body_part not in limits.allowed_body_parts:
        raise UnsupportedModalityError(
            f"BodyPartExamined is {body_part}, not the chest; send a chest X-ray"
        )
    if pixels_cut:
        raise TruncatedPixelDataError(
            "the file ends inside its compressed pixel data (cut off in transfer); send it again"
        )
    if _PIXEL_DATA not in ds:
        raise NoPixelDataError(
            "the DICOM file has no pixel data (a header-only object, or a file cut off just "
            "before its pixel data); send the image object itself"
        )


def _judge_image(ds: Dataset, limits: ImageLimits, file_size: int) -> _PixelHeader:
    """Size, frames, photometric interpretation and pixel encoding, before decoding."""
    rows, cols = _header_int(ds, "Rows", 0), _header_int(ds, "Columns", 0)
    if rows <= 0 or cols <= 0:
        raise CorruptHeaderError(
            f"the DICOM header has no usable Rows/Columns ({rows} x {cols}); {_REEXPORT}"
        )
    frames = max(_header_int(ds, "NumberOfFrames", 1), 1)
    samples = max(_header_int(ds, "SamplesPerPixel", 1) or 1, 1)
    allocated = _header_int(ds, "BitsAllocated", 16) or 16
    total = rows * cols * frames
    _check_size(total, total * samples * max(allocated, 8) // 8, file_size, limits)
    if frames > 1:
        raise UnsupportedImageTypeError(
            f"multi-frame DICOM ({frames} frames); a chest radiograph is one frame: "
            "export the frame to be scored as its own single-frame object"
        )
    photometric = _header_text(ds, "PhotometricInterpretation")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageTypeError(
            f"colour or unsupported photometric interpretation ({photometric or 'missing'}, "
            f"{samples} samples per pixel); radiographs must be MONOCHROME1 or MONOCHROME2"
        )
    header = _pixel_header(ds)
    if header.photometric == "MONOCHROME2" and header.presentation_shape == "INVERSE":
        raise AmbiguousPolarityError(
            "MONOCHROME2 with Presentation LUT Shape INVERSE asks for the inverse of what the "
            "photometric interpretation says (PS3.3 C.8.11.7 pairs INVERSE with MONOCHROME1), "
            "so which way bone is cannot be told; re-export it as MONOCHROME1 or MONOCHROME2 "
            "with a consistent Presentation LUT Shape"
        )
    return header


def _transfer_syntax(ds: Dataset) -> uids.UID:
    """The file's transfer syntax; a missing one is inferred for native pixel data only."""
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax:
        return uids.UID(str(syntax))
    element = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    length = element.length if isinstance(element, RawDataElement) else None
    if length == _UNDEFINED_LENGTH or (length is None and element.is_undefined_length):
        raise MissingTransferSyntaxError(
            "the pixel data are compressed (encapsulated) but the file meta has no Transfer "
            "Syntax UID, so the codec is unknown; re-export the file with its file meta "
            "information, or uncompressed"
        )
    # The encoding pydicom detected while parsing; native pixel bytes follow it (a big-endian
    # file tagged little-endian would decode to byte-swapped noise). pydicom/pydicom#2182.
    implicit, little = ds.original_encoding
    ds.file_meta.TransferSyntaxUID = (
        uids.ImplicitVRLittleEndian
        if implicit is not False
        else uids.ExplicitVRLittleEndian
        if little is not False
        else uids.ExplicitVRBigEndian
    )
    return ds.file_meta.TransferSyntaxUID


def _check_decoder(ts: uids.UID) -> bool:
    """Whether the syntax is native; refuses one that no installed plugin decodes."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise CodecUnavailableError(
            f"no decoder exists for transfer syntax {ts.name or ts}; re-send the study "
            "uncompressed (Explicit VR Little Endian) or as JPEG/JPEG 2000/JPEG-LS/RLE"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # a malformed UID string
        raise CodecUnavailableError(
            f"the transfer syntax {str(ts)[:64]!r} is not a known UID ({_short(exc)}); "
            "re-send the study uncompressed (Explicit VR Little Endian)"
        ) from exc
    if not decoder.is_available:
        raise CodecUnavailableError(f"no decoder installed for {ts.name}: {_CODEC_HINT}")
    return bool(decoder.is_native)


def _pixel_bytes(ds: Dataset) -> bytes:
    try:
        data = ds.PixelData
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptPixelDataError(
            f"the pixel data element cannot be read ({_short(exc)})"
        ) from exc
    if not isinstance(data, bytes):
        raise CorruptPixelDataError(f"the pixel data element holds no bytes; {_REEXPORT}")
    return data


def _frame_header_for(ts: uids.UID, frame: bytes) -> FrameHeader | None:
    if ts in _JPEG_SYNTAXES:
        return jpeg_frame_header(frame)
    return j2k_frame_header(frame)


def _check_native(ds: Dataset, h: _PixelHeader, encapsulated: bool) -> None:
    if encapsulated:
        raise CorruptPixelDataError(
            "the pixel data are encapsulated (compressed) but the transfer syntax is native; "
            f"{_REEXPORT}"
        )
    expected = h.rows * h.cols * h.samples * h.frames * h.bits_allocated // 8
    actual = len(_pixel_bytes(ds))
    if actual < expected:
        raise TruncatedPixelDataError(
            f"pixel data is truncated ({actual} of {expected} bytes); the file was cut off in "
            "transfer: send it again"
        )


def _check_encapsulated(
    ds: Dataset, h: _PixelHeader, ts: uids.UID, limits: ImageLimits, file_size: int
) -> None:
    """Compare what the codestream asks for with the header and the limits, before decoding."""
    if h.frames != 1:  # multi-frame is refused earlier; the frame split below assumes one
        raise UnsupportedImageTypeError("multi-frame DICOM; export a single-frame object")
    try:
        frame = next(generate_frames(_pixel_bytes(ds), number_of_frames=1), b"")
    except MemoryError:
        raise
    except Exception as exc:  # invalid item tags or lengths in the encapsulation
        raise CorruptPixelDataError(
            f"the encapsulated pixel data items are invalid ({_short(exc)}); {_REEXPORT}"
        ) from exc
    if not frame:
        raise CorruptPixelDataError(f"the encapsulated pixel data hold no frame; {_REEXPORT}")
    declared = f"{h.cols} x {h.rows}"
    if ts == uids.RLELossless:
        _check_rle(frame, h, declared)
        return
    if ts not in _JPEG_SYNTAXES and ts not in _J2K_SYNTAXES:
        raise CodecUnavailableError(
            f"{ts.name} pixel data cannot be checked before decoding; re-send the study "
            "uncompressed (Explicit VR Little Endian) or as JPEG/JPEG 2000/JPEG-LS/RLE"
        )
    fh = _frame_header_for(ts, frame)
    if fh is None:
        raise CorruptPixelDataError(
            f"the {ts.name} frame has no readable frame header (SOF/SIZ); {_REEXPORT}"
        )
    if fh.pixels > limits.max_pixels:
        # The header's own size passed the limit, so the frame is larger than the header says.
        raise DecompressionBombError(
            f"the {fh.codec} frame declares {fh.cols} x {fh.rows} = {fh.pixels:,} pixels but "
            f"the header declares {declared}, in a {file_size:,}-byte file: a decompression "
            f"bomb over max_pixels {limits.max_pixels:,}, refused without decoding; send the "
            "original radiograph"
        )
    if (fh.rows, fh.cols) != (h.rows, h.cols):
        raise FrameSizeMismatchError(
            f"the {fh.codec} frame is {fh.cols} x {fh.rows} but the header declares "
            f"{declared} (Columns x Rows): the pixel data are not this image (PS3.5 8.2); "
            f"{_REEXPORT}"
        )
    if fh.components != h.samples:
        raise FrameSizeMismatchError(
            f"the {fh.codec} frame has {fh.components} components but SamplesPerPixel is "
            f"{h.samples}; {_REEXPORT}"
        )
    if not 1 <= fh.precision <= h.bits_allocated:
        raise FrameSizeMismatchError(
            f"the {fh.codec} frame has {fh.precision}-bit samples but BitsAllocated is "
            f"{h.bits_allocated}; {_REEXPORT}"
        )
    if fh.tiles > 65535:  # ISO/IEC 15444-1 A.4.2: at most 65535 tiles
        raise CorruptPixelDataError(
            f"the JPEG 2000 frame declares {fh.tiles:,} tiles (65,535 at most); {_REEXPORT}"
        )


def _check_rle(frame: bytes, h: _PixelHeader, declared: str) -> None:
    expected_segments = h.samples * h.bits_allocated // 8
    segment_bytes = h.rows * h.cols
    # Some encoders pad each row of odd width to an even length; pydicom trims that excess.
    slack = h.rows
    lengths = rle_segment_lengths(frame, segment_bytes + slack)
    if lengths is None:
        raise CorruptPixelDataError(
            f"the RLE frame header (segment count and offsets) is invalid; {_REEXPORT}"
        )
    if len(lengths) != expected_segments:
        raise FrameSizeMismatchError(
            f"the RLE frame has {len(lengths)} segments but SamplesPerPixel x BitsAllocated / 8 "
            f"is {expected_segments}; {_REEXPORT}"
        )
    for index, length in enumerate(lengths, 1):
        if length > segment_bytes + slack:
            raise FrameSizeMismatchError(
                f"RLE segment {index} decodes to more than the {segment_bytes:,} bytes of the "
                f"{declared} image the header declares (refused without decoding); "
                f"{_REEXPORT}"
            )
        if length < segment_bytes:
            raise CorruptPixelDataError(
                f"RLE segment {index} decodes to {length:,} of {segment_bytes:,} bytes; "
                f"{_REEXPORT}"
            )


# -- decoding and grey levels ---------------------------------------------------------------------


def _decode(ds: Dataset, h: _PixelHeader) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:  # any codec plugin or pydicom failure on this file's data
        text = str(exc).lower()
        if "less than expected" in text or "truncat" in text:
            raise TruncatedPixelDataError(
                f"pixel data is truncated ({_short(exc)}); the file was cut off in transfer: "
                "send it again"
            ) from exc
        raise CorruptPixelDataError(
            f"pixel data cannot be decoded ({_short(exc)}); {_REEXPORT} or send it uncompressed"
        ) from exc
    if stored.shape != (h.rows, h.cols):
        raise CorruptPixelDataError(
            f"decoded pixel array has shape {stored.shape}, not the header's "
            f"{h.rows} x {h.cols}; {_REEXPORT}"
        )
    return stored


def _padding_mask(h: _PixelHeader, stored: np.ndarray) -> np.ndarray | None:
    if h.padding is None:
        return None
    low, high = h.padding
    mask = stored == low if low == high else (stored >= low) & (stored <= high)
    return mask if mask.any() else None


def _apply_lut(values: np.ndarray, lut: _Lut) -> np.ndarray:
    """PS3.3 C.11.1.1: values below the first mapped one take the first entry, above the last
    one the last entry."""
    index = np.clip(values.astype(np.int64) - lut.first, 0, lut.table.size - 1)
    return lut.table[index]


def _unit_range(values: np.ndarray, pad: np.ndarray | None) -> np.ndarray:
    """Min-max to [0, 1] over the non-padding values."""
    anatomy = values if pad is None else values[~pad]
    if anatomy.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    lo, hi = float(anatomy.min()), float(anatomy.max())
    return ((values - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def _to_display(h: _PixelHeader, stored: np.ndarray) -> np.ndarray:
    """Stored values -> float32 in [0, 1], MONOCHROME2 convention, padding black."""
    pad = _padding_mask(h, stored)
    if h.modality_lut is None and h.voi_lut is None and h.voi_function != "SIGMOID":
        slope, intercept = h.slope, h.intercept
        if h.window is None:
            anatomy = stored if pad is None else stored[~pad]
            if anatomy.size == 0:
                return np.zeros(stored.shape, dtype=np.float32)
            lo, hi = float(anatomy.min()), float(anatomy.max())
            lower, upper = sorted((lo * slope + intercept, hi * slope + intercept))
        else:
            lower, upper = h.window
        span = max(upper - lower, 1e-6)
        # value = (stored * slope + intercept - lower) / span, fused into one multiply-add;
        # MONOCHROME1 folds the inversion 1 - value into the same coefficients.
        a, b = slope / span, (intercept - lower) / span
        if h.invert:
            a, b = -a, 1.0 - b
        out = stored.astype(np.float32)
        out *= np.float32(a)
        out += np.float32(b)
        np.clip(out, 0.0, 1.0, out=out)
    else:
        if h.modality_lut is not None:
            values = _apply_lut(stored, h.modality_lut).astype(np.float64)
        else:
            values = stored.astype(np.float64) * h.slope + h.intercept
        if h.voi_lut is not None:
            # A LUT is indexed by integers: round rescaled values to the nearest entry.
            values = _apply_lut(np.rint(values), h.voi_lut).astype(np.float64)
        elif h.center_width is not None and h.voi_function == "SIGMOID":
            center, width = h.center_width  # PS3.3 C.11.2.1.3.1
            values = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif h.window is not None:
            lower, upper = h.window
            values = np.clip((values - lower) / max(upper - lower, 1e-6), 0.0, 1.0)
        out = _unit_range(values, pad)
        if h.invert:
            out = 1.0 - out
    if pad is not None:
        out[pad] = 0.0  # padding is shown black, after any inversion
    return out


def decode_dicom(fp: BinaryIO, size: int, limits: ImageLimits) -> DecodedImage:
    """Read a DICOM chest radiograph from an open file or buffer (the reader's DICOM path).

    Args:
        fp: the content, seekable; read from its start.
        size: its length in bytes.
        limits: what to refuse before decoding.

    Raises:
        InvalidImageError: a subclass saying why the file cannot be used.
    """
    parsed = _parse(fp, size, limits)
    ds = parsed.ds
    _judge_subject(ds, limits, parsed.pixels_cut)
    ts = _transfer_syntax(ds)
    h = _judge_image(ds, limits, size)
    native = _check_decoder(ts)
    element = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    encapsulated = (
        element.length == _UNDEFINED_LENGTH
        if isinstance(element, RawDataElement)
        else bool(element.is_undefined_length)
    )
    if native:
        _check_native(ds, h, encapsulated)
    elif not encapsulated:
        raise CorruptPixelDataError(
            f"{ts.name} pixel data must be encapsulated (PS3.5 A.4) but have a defined length; "
            f"{_REEXPORT}"
        )
    else:
        _check_encapsulated(ds, h, ts, limits, size)
    stored = _decode(ds, h)
    return DecodedImage(
        pixels=_to_display(h, stored), meta=dicom_meta(ds), identifiers=_identifiers(ds)
    )


def read_dicom(
    source: str | os.PathLike[str] | bytes, limits: ImageLimits = ImageLimits()
) -> DecodedImage:
    """Read a DICOM chest radiograph (Part 10, or a data set without preamble).

    Args:
        source: a path or the file's bytes.
        limits: what to refuse before decoding.

    Returns:
        The decoded image with PHI-free metadata; raw identifiers are kept apart.

    Raises:
        InvalidImageError: a subclass saying why the file cannot be used (only those).
    """
    from cxr_triage.io.images import guarded, open_source

    def read() -> DecodedImage:
        with open_source(source, limits) as (fp, size):
            return decode_dicom(fp, size, limits)

    return guarded(read)
