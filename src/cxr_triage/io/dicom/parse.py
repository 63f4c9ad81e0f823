"""Bounded parsing of DICOM: file meta, data set, truncation, deflate and element-count limits.

Parsing never trusts the file: anything pydicom raises becomes ``corrupt_header`` (or
``truncated_header`` when the file ends inside its header, ``not_an_image`` when it is not
DICOM). A data set without preamble and file meta is DICOM too, when it names an SOP class or
instance, a modality, a study or pixel data. A deflated data set is inflated in bounded steps
(``ImageLimits.max_inflated_bytes``) before pydicom inflates it, and the top-level elements are
counted as they are read (``ImageLimits.max_header_elements``).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import uid as uids
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_partial  # pinned pydicom 3.0.2

from cxr_triage.errors import (
    CorruptHeaderError,
    DecompressionBombError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedHeaderError,
)
from cxr_triage.io.guards import inflated_size
from cxr_triage.io.records import ImageLimits

__all__ = ["PIXEL_DATA", "REEXPORT", "UNDEFINED_LENGTH", "Parsed", "exception_text", "parse_dicom"]

REEXPORT = "re-export the image from the modality or PACS"
PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
# Elements whose presence makes a preamble-less data set recognisably DICOM.
_IDENTIFYING_TAGS = (0x00080016, 0x00080018, 0x00080060, 0x0020000D, PIXEL_DATA)
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
_NEITHER = "not an image: the content is neither DICOM, PNG nor JPEG"


def exception_text(exc: BaseException) -> str:
    """An exception as ``Type: message``, cut to a log- and response-friendly length."""
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


@dataclass
class Parsed:
    """A parsed data set, pixel data not yet decoded."""

    ds: Dataset
    pixels_cut: bool  # the file ends inside encapsulated pixel data (header read on its own)


def parse_dicom(
    fp: BinaryIO, size: int, limits: ImageLimits, *, header_only: bool = False
) -> Parsed:
    """Parse Part-10 DICOM, or a bare data set, from ``fp`` (``size`` bytes long).

    Args:
        fp: the content, seekable; read from its start.
        size: its length in bytes.
        limits: ``max_inflated_bytes`` and ``max_header_elements``.
        header_only: stop before the pixel data (metadata of a refused file).

    Raises:
        NotAnImageError: the content is not DICOM.
        TruncatedHeaderError: the file ends inside its header or before its data set.
        CorruptHeaderError: pydicom cannot parse it.
        DecompressionBombError: a deflated data set inflates past ``limits.max_inflated_bytes``.
        ImageTooLargeError: more than ``limits.max_header_elements`` top-level elements.
    """
    part10 = _sniff(fp)
    try:
        meta, parsed = _read_dataset(fp, size, limits, part10=part10, header_only=header_only)
    except (CorruptHeaderError, TruncatedHeaderError) as exc:
        if part10:
            raise
        raise NotAnImageError(
            f"{_NEITHER} (it starts like a DICOM data set without preamble, but {exc}); send "
            "one of those formats"
        ) from exc
    if part10 and not header_only and not parsed.pixels_cut:
        _check_image_complete(parsed.ds, meta)
    if not part10 and not any(tag in parsed.ds for tag in _IDENTIFYING_TAGS):
        # Old ACR-NEMA style exports are still DICOM; random bytes parsed with force=True are
        # not taken for one unless they name an SOP class/instance, modality, study or pixels.
        raise NotAnImageError(f"{_NEITHER}; send one of those formats")
    return parsed


def _sniff(fp: BinaryIO) -> bool:
    """Whether the content is Part-10 DICOM (else a bare data set); refuses anything else."""
    fp.seek(0)
    head = fp.read(132)
    part10 = head[128:132] == b"DICM"
    if not part10 and not _starts_like_dataset(head):
        raise NotAnImageError(f"{_NEITHER}; send one of those formats")
    return part10


def _starts_like_dataset(data: bytes) -> bool:
    """Whether the bytes open with a tag of a group a DICOM data set starts with."""
    if len(data) < 8:
        return False
    little, big = struct.unpack_from("<H", data)[0], struct.unpack_from(">H", data)[0]
    return little in _FIRST_GROUPS or big in _FIRST_GROUPS


def _read_dataset(
    fp: BinaryIO, size: int, limits: ImageLimits, *, part10: bool, header_only: bool
) -> tuple[FileMetaDataset, Parsed]:
    """File meta, then the data set, each checked for truncation; deflate checked first."""
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
    return meta, Parsed(ds, pixels_cut)


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
            f"the file ends inside its DICOM header ({exception_text(exc)}); it was cut off in "
            "transfer: send it again"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input; all mean this
        raise CorruptHeaderError(
            f"the DICOM header cannot be parsed ({exception_text(exc)}); it is corrupt: {REEXPORT}"
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
            f"the file ends inside its DICOM file meta header ({exception_text(exc)}); it was "
            "cut off in transfer: send it again"
        ) from exc
    except Exception as exc:
        # A value cut short fails only when converted: compare with the group length.
        fp.seek(start + 8)
        group_length = int.from_bytes(fp.read(4), "little")
        if size < start + 12 + group_length:
            raise TruncatedHeaderError(
                f"the file ends inside its DICOM file meta header ({exception_text(exc)}); it "
                "was cut off in transfer: send it again"
            ) from exc
        raise CorruptHeaderError(
            f"the DICOM file meta header cannot be parsed ({exception_text(exc)}); {REEXPORT}"
        ) from exc
    if syntax is not None and not isinstance(syntax, str):
        raise CorruptHeaderError(
            f"the Transfer Syntax UID is {type(syntax).__name__}, not a UID; {REEXPORT}"
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
            f"the deflated DICOM data set cannot be inflated ({exc}); {REEXPORT}"
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
    if not isinstance(last, RawDataElement) or last.length == UNDEFINED_LENGTH:
        return
    read = len(last.value) if last.value is not None else last.length
    if read < last.length and (last.tag != PIXEL_DATA or header_only):
        raise TruncatedHeaderError(
            f"the file ends inside header element ({last.tag.group:04X},{last.tag.elem:04X}) "
            f"({read} of {last.length} bytes), before the pixel data; it was cut off in "
            "transfer: send it again"
        )
    if header_only or stream_size is None or PIXEL_DATA in ds or last.value_tell is None:
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
    if PIXEL_DATA in ds or all(tag in ds for tag in _IMAGE_PIXEL_TYPE1):
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
