"""The judgement of a parsed DICOM before any pixel is decoded.

- Modality must be one of ``ImageLimits.allowed_modalities`` (CR, DX by default); a filled
  BodyPartExamined other than a chest value is refused too. Multi-frame and colour images are
  refused: a chest radiograph is one grey frame. Only MONOCHROME1 and MONOCHROME2 are accepted,
  and MONOCHROME2 with Presentation LUT Shape INVERSE is refused (``ambiguous_polarity``): it
  asks for the inverse of what the photometric interpretation says.
- Memory: Rows x Columns x frames is checked against ``ImageLimits.max_pixels``, and the codec's
  own frame header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, RLE segment table and lengths; see
  :mod:`cxr_triage.io.guards`) must describe exactly the image of the header, so no decoder is
  ever handed a frame larger than what was checked (DICOM PS3.5 8.2, A.4).
- A Part-10 file without Transfer Syntax UID is read with the encoding pydicom detected when
  its pixel data are native (pydicom/pydicom#2182), refused (``missing_transfer_syntax``) when
  they are encapsulated. A syntax with no installed decoder plugin (pylibjpeg, pyjpegls, gdcm)
  is refused with the packages to install.
"""

from __future__ import annotations

from pydicom import uid as uids
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder

from cxr_triage.errors import (
    AmbiguousPolarityError,
    CodecUnavailableError,
    CorruptHeaderError,
    CorruptPixelDataError,
    DecompressionBombError,
    FrameSizeMismatchError,
    MissingTransferSyntaxError,
    NoPixelDataError,
    TruncatedPixelDataError,
    UnsupportedImageTypeError,
    UnsupportedModalityError,
)
from cxr_triage.io.dicom.header import PixelHeader, header_int, header_text, pixel_header
from cxr_triage.io.dicom.parse import PIXEL_DATA, REEXPORT, UNDEFINED_LENGTH, exception_text
from cxr_triage.io.guards import (
    FrameHeader,
    j2k_frame_header,
    jpeg_frame_header,
    rle_segment_lengths,
)
from cxr_triage.io.records import ImageLimits
from cxr_triage.io.sources import check_size

__all__ = ["check_pixel_data", "judge_image", "judge_subject", "transfer_syntax"]

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
_JPEG_SYNTAXES = frozenset(uids.JPEGTransferSyntaxes) | frozenset(uids.JPEGLSTransferSyntaxes)
_J2K_SYNTAXES = frozenset(uids.JPEG2000TransferSyntaxes)


# -- what the file is -----------------------------------------------------------------------


def judge_subject(ds: Dataset, limits: ImageLimits, pixels_cut: bool) -> None:
    """Modality, body part and pixel data presence: what the file is, before how it is coded."""
    modality = header_text(ds, "Modality")
    if modality not in limits.allowed_modalities:
        what = _MODALITY_NAMES.get(modality, modality or "missing")
        raise UnsupportedModalityError(
            f"modality is {what}, not a projection radiograph "
            f"({'/'.join(limits.allowed_modalities)}); send a chest X-ray (CR or DX)"
        )
    body_part = header_text(ds, "BodyPartExamined")
    if body_part and body_part not in limits.allowed_body_parts:
        raise UnsupportedModalityError(
            f"BodyPartExamined is {body_part}, not the chest; send a chest X-ray"
        )
    if pixels_cut:
        raise TruncatedPixelDataError(
            "the file ends inside its compressed pixel data (cut off in transfer); send it again"
        )
    if PIXEL_DATA not in ds:
        raise NoPixelDataError(
            "the DICOM file has no pixel data (a header-only object, or a file cut off just "
            "before its pixel data); send the image object itself"
        )


def judge_image(ds: Dataset, limits: ImageLimits, file_size: int) -> PixelHeader:
    """Size, frames, photometric interpretation and pixel encoding, before decoding."""
    rows, cols = header_int(ds, "Rows", 0), header_int(ds, "Columns", 0)
    if rows <= 0 or cols <= 0:
        raise CorruptHeaderError(
            f"the DICOM header has no usable Rows/Columns ({rows} x {cols}); {REEXPORT}"
        )
    frames = max(header_int(ds, "NumberOfFrames", 1), 1)
    samples = max(header_int(ds, "SamplesPerPixel", 1) or 1, 1)
    allocated = header_int(ds, "BitsAllocated", 16) or 16
    total = rows * cols * frames
    check_size(total, total * samples * max(allocated, 8) // 8, file_size, limits)
    if frames > 1:
        raise UnsupportedImageTypeError(
            f"multi-frame DICOM ({frames} frames); a chest radiograph is one frame: "
            "export the frame to be scored as its own single-frame object"
        )
    photometric = header_text(ds, "PhotometricInterpretation")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageTypeError(
            f"colour or unsupported photometric interpretation ({photometric or 'missing'}, "
            f"{samples} samples per pixel); radiographs must be MONOCHROME1 or MONOCHROME2"
        )
    header = pixel_header(ds)
    _check_polarity(header)
    return header


def _check_polarity(h: PixelHeader) -> None:
    if h.photometric == "MONOCHROME2" and h.presentation_shape == "INVERSE":
        raise AmbiguousPolarityError(
            "MONOCHROME2 with Presentation LUT Shape INVERSE asks for the inverse of what the "
            "photometric interpretation says (PS3.3 C.8.11.7 pairs INVERSE with MONOCHROME1), "
            "so which way bone is cannot be told; re-export it as MONOCHROME1 or MONOCHROME2 "
            "with a consistent Presentation LUT Shape"
        )


# -- how the pixel data are coded -----------------------------------------------------------


def transfer_syntax(ds: Dataset) -> uids.UID:
    """The file's transfer syntax; a missing one is inferred for native pixel data only."""
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax:
        return uids.UID(str(syntax))
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    length = element.length if isinstance(element, RawDataElement) else None
    if length == UNDEFINED_LENGTH or (length is None and element.is_undefined_length):
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


def check_pixel_data(
    ds: Dataset, h: PixelHeader, ts: uids.UID, limits: ImageLimits, file_size: int
) -> None:
    """The pixel data against the transfer syntax, the header and the limits, before decoding.

    Raises:
        CodecUnavailableError: no installed decoder, or a codestream that cannot be checked.
        CorruptPixelDataError: encapsulation and transfer syntax disagree, or invalid items.
        TruncatedPixelDataError: native pixel data shorter than the header declares.
        FrameSizeMismatchError / DecompressionBombError: the codec's frame header is not the
            image of the header.
    """
    native = _check_decoder(ts)
    encapsulated = _is_encapsulated(ds)
    if native:
        _check_native(ds, h, encapsulated)
    elif not encapsulated:
        raise CorruptPixelDataError(
            f"{ts.name} pixel data must be encapsulated (PS3.5 A.4) but have a defined length; "
            f"{REEXPORT}"
        )
    else:
        _check_encapsulated(ds, h, ts, limits, file_size)


def _syntax_label(ts: uids.UID) -> str:
    """ "JPEG XL Lossless (1.2.840.10008.1.2.4.110)": the name alone depends on which packages
    registered names with pydicom (pynetdicom and highdicom add some), the UID does not."""
    name = ts.name
    return str(ts) if not name or name == str(ts) else f"{name} ({ts})"


def _check_decoder(ts: uids.UID) -> bool:
    """Whether the syntax is native; refuses one that no installed plugin decodes."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise CodecUnavailableError(
            f"no decoder exists for transfer syntax {_syntax_label(ts)}; re-send the study "
            "uncompressed (Explicit VR Little Endian) or as JPEG/JPEG 2000/JPEG-LS/RLE"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # a malformed UID string
        raise CodecUnavailableError(
            f"the transfer syntax {str(ts)[:64]!r} is not a known UID ({exception_text(exc)}); "
            "re-send the study uncompressed (Explicit VR Little Endian)"
        ) from exc
    if not decoder.is_available:
        raise CodecUnavailableError(f"no decoder installed for {_syntax_label(ts)}: {_CODEC_HINT}")
    return bool(decoder.is_native)


def _is_encapsulated(ds: Dataset) -> bool:
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if isinstance(element, RawDataElement):
        return element.length == UNDEFINED_LENGTH
    return bool(element.is_undefined_length)


def _pixel_bytes(ds: Dataset) -> bytes:
    try:
        data = ds.PixelData
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptPixelDataError(
            f"the pixel data element cannot be read ({exception_text(exc)})"
        ) from exc
    if not isinstance(data, bytes):
        raise CorruptPixelDataError(f"the pixel data element holds no bytes; {REEXPORT}")
    return data


def _check_native(ds: Dataset, h: PixelHeader, encapsulated: bool) -> None:
    if encapsulated:
        raise CorruptPixelDataError(
            "the pixel data are encapsulated (compressed) but the transfer syntax is native; "
            f"{REEXPORT}"
        )
    expected = h.rows * h.cols * h.samples * h.frames * h.bits_allocated // 8
    actual = len(_pixel_bytes(ds))
    if actual < expected:
        raise TruncatedPixelDataError(
            f"pixel data is truncated ({actual} of {expected} bytes); the file was cut off in "
            "transfer: send it again"
        )


# -- the codec's own frame header -----------------------------------------------------------


def _check_encapsulated(
    ds: Dataset, h: PixelHeader, ts: uids.UID, limits: ImageLimits, file_size: int
) -> None:
    """Compare what the codestream asks for with the header and the limits, before decoding."""
    if h.frames != 1:  # multi-frame is refused earlier; the frame split below assumes one
        raise UnsupportedImageTypeError("multi-frame DICOM; export a single-frame object")
    frame = _first_frame(ds)
    declared = f"{h.cols} x {h.rows}"
    if ts == uids.RLELossless:
        _check_rle(frame, h, declared)
        return
    if ts not in _JPEG_SYNTAXES and ts not in _J2K_SYNTAXES:
        raise CodecUnavailableError(
            f"{ts.name} pixel data cannot be checked before decoding; re-send the study "
            "uncompressed (Explicit VR Little Endian) or as JPEG/JPEG 2000/JPEG-LS/RLE"
        )
    fh = jpeg_frame_header(frame) if ts in _JPEG_SYNTAXES else j2k_frame_header(frame)
    if fh is None:
        raise CorruptPixelDataError(
            f"the {ts.name} frame has no readable frame header (SOF/SIZ); {REEXPORT}"
        )
    _check_frame_header(fh, h, declared, limits, file_size)


def _first_frame(ds: Dataset) -> bytes:
    try:
        frame = next(generate_frames(_pixel_bytes(ds), number_of_frames=1), b"")
    except MemoryError:
        raise
    except Exception as exc:  # invalid item tags or lengths in the encapsulation
        raise CorruptPixelDataError(
            f"the encapsulated pixel data items are invalid ({exception_text(exc)}); {REEXPORT}"
        ) from exc
    if not frame:
        raise CorruptPixelDataError(f"the encapsulated pixel data hold no frame; {REEXPORT}")
    return frame


def _check_frame_header(
    fh: FrameHeader, h: PixelHeader, declared: str, limits: ImageLimits, file_size: int
) -> None:
    """A JPEG / JPEG-LS / JPEG 2000 frame header against the DICOM header and the limits."""
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
            f"{REEXPORT}"
        )
    if fh.components != h.samples:
        raise FrameSizeMismatchError(
            f"the {fh.codec} frame has {fh.components} components but SamplesPerPixel is "
            f"{h.samples}; {REEXPORT}"
        )
    if not 1 <= fh.precision <= h.bits_allocated:
        raise FrameSizeMismatchError(
            f"the {fh.codec} frame has {fh.precision}-bit samples but BitsAllocated is "
            f"{h.bits_allocated}; {REEXPORT}"
        )
    if fh.tiles > 65535:  # ISO/IEC 15444-1 A.4.2: at most 65535 tiles
        raise CorruptPixelDataError(
            f"the JPEG 2000 frame declares {fh.tiles:,} tiles (65,535 at most); {REEXPORT}"
        )


def _check_rle(frame: bytes, h: PixelHeader, declared: str) -> None:
    expected_segments = h.samples * h.bits_allocated // 8
    segment_bytes = h.rows * h.cols
    # Some encoders pad each row of odd width to an even length; pydicom trims that excess.
    slack = h.rows
    lengths = rle_segment_lengths(frame, segment_bytes + slack)
    if lengths is None:
        raise CorruptPixelDataError(
            f"the RLE frame header (segment count and offsets) is invalid; {REEXPORT}"
        )
    if len(lengths) != expected_segments:
        raise FrameSizeMismatchError(
            f"the RLE frame has {len(lengths)} segments but SamplesPerPixel x BitsAllocated / 8 "
            f"is {expected_segments}; {REEXPORT}"
        )
    for index, length in enumerate(lengths, 1):
        if length > segment_bytes + slack:
            raise FrameSizeMismatchError(
                f"RLE segment {index} decodes to more than the {segment_bytes:,} bytes of the "
                f"{declared} image the header declares (refused without decoding); "
                f"{REEXPORT}"
            )
        if length < segment_bytes:
            raise CorruptPixelDataError(
                f"RLE segment {index} decodes to {length:,} of {segment_bytes:,} bytes; {REEXPORT}"
            )
