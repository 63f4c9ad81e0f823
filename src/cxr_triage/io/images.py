"""One entry point for pixels: :func:`read_image` sniffs the content (not the file extension)
and reads DICOM, PNG or JPEG into a :class:`DecodedImage`.

Whatever is wrong with a file, :func:`read_image` raises an
:class:`~cxr_triage.errors.InvalidImageError` subclass and nothing else (KeyboardInterrupt and
SystemExit still propagate): parsers and codecs are called inside narrow guards that turn their
failures into typed refusals, and a last guard (:func:`guarded`) turns anything unforeseen into
a bare ``InvalidImageError`` (reason ``invalid_image``), logged as a bug. The fuzzing harness
(``make fuzz``) fails on that bare class, so it proves the narrow guards complete.

Raster rules (PNG/JPEG): the PNG IHDR / JPEG SOF is read first, so size guards run before Pillow
allocates anything. 1- to 16-bit grey is read as it is (scaled by its bit depth);
RGB/RGBA/palette/grey+alpha images are accepted only when their colour channels agree (a grey
radiograph saved in a colour mode, as many exported PNGs are) and refused as colour otherwise;
alpha is dropped; EXIF orientation is applied. Pillow reduces 16-bit colour-typed PNGs to
8 bits and cannot read 12-bit JPEG, so those are refused (``unsupported_bit_depth``) rather than
read with lost bits. A PNG whose ancillary chunks Pillow rejects (an ICC profile inflating past
``PngImagePlugin.MAX_TEXT_CHUNK``, a truncated pHYs: Pillow raises ValueError) is decoded from
its critical chunks, which hold all the samples. PNG/JPEG carry no acquisition metadata, so
modality, view, sex and age are empty unless a labels table supplies them.
"""

from __future__ import annotations

import io
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_triage.errors import (
    CodecUnavailableError,
    CorruptHeaderError,
    CorruptPixelDataError,
    DecompressionBombError,
    ImageTooLargeError,
    InvalidImageError,
    NotAnImageError,
    TruncatedPixelDataError,
    UnsupportedBitDepthError,
    UnsupportedImageTypeError,
)
from cxr_triage.io.dicom import _check_size, _parse, decode_dicom, dicom_meta
from cxr_triage.io.guards import jpeg_frame_header, png_critical_chunks, png_header
from cxr_triage.io.records import DecodedImage, ImageLimits, ImageMeta

__all__ = ["guarded", "inspect_image", "load_bytes", "open_source", "read_image", "sniff_format"]

log = logging.getLogger(__name__)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Mean absolute difference (in 8-bit levels) between colour channels below which an RGB file is
# treated as a grey radiograph saved in a colour mode.
_GREY_TOLERANCE = 2.0
# JPEG processes Pillow (libjpeg-turbo) decodes: baseline, extended, progressive, arithmetic.
_PILLOW_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC9, 0xCA})
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}

T = TypeVar("T")


def guarded(read: Callable[[], T]) -> T:
    """Run a reader; anything it raises that is not an InvalidImageError becomes one.

    The reader's own guards already type every failure they can foresee; what reaches this
    point is a bug, logged with its traceback's location (not its message, which may quote
    header values) and refused as ``invalid_image`` so that one file never fails a batch.
    MemoryError becomes ``image_too_large``: the size guards passed, but decoding still did not
    fit in memory.
    """
    try:
        return read()
    except InvalidImageError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(
            "decoding the image ran out of memory; downsample it or lower max_pixels"
        ) from exc
    except Exception as exc:  # the last guard, by design: see the docstring
        where = traceback.extract_tb(exc.__traceback__)[-1]
        log.error(
            "unexpected %s while reading an image at %s:%s; refused as invalid_image",
            type(exc).__name__,
            Path(where.filename).name,
            where.lineno,
        )
        raise InvalidImageError(
            f"the file could not be read ({type(exc).__name__}); re-export it as DICOM, PNG "
            "or JPEG, and report this file to the maintainers"
        ) from exc


class _CappedReader(io.BufferedReader):
    """A file whose reads never ask for more than it holds.

    A corrupt length field in a DICOM header (up to 4 GiB) would otherwise make
    ``BufferedReader.read`` allocate that much before finding the end of the file.
    """

    def __init__(self, raw: io.FileIO, size: int) -> None:
        super().__init__(raw)
        self._size = size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(self._size - self.tell(), 0))
        return super().read(size)


def _file_size(source: str | os.PathLike[str], limits: ImageLimits) -> int:
    try:
        size = os.stat(source).st_size
        regular = Path(source).is_file()
    except (OSError, ValueError):
        regular = False
    if not regular:
        raise NotAnImageError(f"no such file: {source}")
    if size > limits.max_file_bytes:
        raise ImageTooLargeError(_file_too_large(size, limits))
    return size


@contextmanager
def open_source(
    source: str | os.PathLike[str] | bytes, limits: ImageLimits
) -> Iterator[tuple[BinaryIO, int]]:
    """A path or bytes as a seekable binary stream and its size, within ``max_file_bytes``.

    A path is read by pydicom straight from the file (no copy of the whole file in memory).

    Raises:
        NotAnImageError: no such file, not a regular file, or unreadable.
        ImageTooLargeError: more than ``limits.max_file_bytes``.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if len(data) > limits.max_file_bytes:
            raise ImageTooLargeError(_file_too_large(len(data), limits))
        yield io.BytesIO(data), len(data)
        return
    size = _file_size(source, limits)
    try:
        fh = _CappedReader(io.FileIO(source, "r"), size)
    except OSError as exc:
        raise NotAnImageError(f"cannot read the file ({exc.strerror or exc})") from exc
    with fh:
        yield fh, size


def load_bytes(source: str | os.PathLike[str] | bytes, limits: ImageLimits) -> bytes:
    """The content of a path or bytes, refused before reading when over ``max_file_bytes``.

    Raises:
        NotAnImageError: no such file, not a regular file, or unreadable.
        ImageTooLargeError: more than ``limits.max_file_bytes``.
    """
    with open_source(source, limits) as (fp, _):
        try:
            return fp.read()
        except OSError as exc:
            raise NotAnImageError(f"cannot read the file ({exc.strerror or exc})") from exc


def _file_too_large(size: int, limits: ImageLimits) -> str:
    return (
        f"the file has {size:,} bytes, over the limit of {limits.max_file_bytes:,} "
        "(max_file_bytes); send the original radiograph or raise the limit"
    )


def sniff_format(source: str | os.PathLike[str] | bytes) -> str:
    """'dicom', 'png', 'jpeg' or 'unknown', from the first bytes of the content.

    A DICOM data set without the 128-byte preamble is 'unknown' here; :func:`read_image`
    still recognises it by parsing.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        head = bytes(source[:132])
    else:
        with open(source, "rb") as fh:
            head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    return "unknown"


def _decode(fp: BinaryIO, size: int, limits: ImageLimits) -> DecodedImage:
    head = fp.read(132)
    kind = sniff_format(head)
    if kind in ("png", "jpeg"):
        fp.seek(0)
        return _read_raster(fp.read(), kind, limits)
    if size == 0:
        raise NotAnImageError("the file is empty; send a DICOM, PNG or JPEG image")
    # Part 10 DICOM, or a data set without the 128-byte preamble (old ACR-NEMA style exports):
    # both are DICOM, read and then judged like any other; random bytes stay not_an_image.
    return decode_dicom(fp, size, limits)


def _read(source: str | os.PathLike[str] | bytes, limits: ImageLimits) -> DecodedImage:
    try:
        with open_source(source, limits) as (fp, size):
            return _decode(fp, size, limits)
    except OSError as exc:  # the file vanished or failed while being read
        raise NotAnImageError(f"cannot read the file ({exc.strerror or exc})") from exc


def read_image(
    source: str | os.PathLike[str] | bytes, limits: ImageLimits = ImageLimits()
) -> DecodedImage:
    """Read a chest radiograph from a path or bytes.

    Args:
        source: path to, or bytes of, a DICOM, PNG or JPEG file.
        limits: size and modality guards applied before decoding.

    Returns:
        Pixels as float32 in [0, 1] (MONOCHROME2 convention) with PHI-free metadata.

    Raises:
        InvalidImageError: a subclass saying what is wrong and what to send instead; never any
            other exception for a bad file.
    """
    return guarded(lambda: _read(source, limits))


# -- PNG / JPEG ----------------------------------------------------------------------------------


def _raster_header(data: bytes, kind: str, limits: ImageLimits) -> int:
    """Check the PNG IHDR / JPEG SOF against the limits; returns the bit depth."""
    if kind == "png":
        hdr = png_header(data)
        if hdr is None:
            raise NotAnImageError("the PNG file cannot be decoded (no IHDR chunk); re-export it")
        if hdr.bit_depth not in _PNG_DEPTHS.get(hdr.colour_type, ()):
            raise CorruptHeaderError(
                f"the PNG declares colour type {hdr.colour_type} with bit depth "
                f"{hdr.bit_depth}, which PNG does not allow; re-export it"
            )
        if hdr.width == 0 or hdr.height == 0:
            raise CorruptHeaderError("the PNG declares an empty image; re-export it")
        n = hdr.width * hdr.height
        _check_size(n, n * hdr.channels * max(hdr.bit_depth, 8) // 8, len(data), limits)
        if hdr.bit_depth == 16 and hdr.colour_type != 0:
            what = "grey + alpha" if hdr.colour_type == 4 else "RGB/RGBA"
            raise UnsupportedBitDepthError(
                f"16-bit PNG with colour type {hdr.colour_type} ({what}): the decoder would "
                "reduce it to 8 bits; send a 16-bit greyscale PNG without alpha, or the DICOM"
            )
        return hdr.bit_depth
    fh = jpeg_frame_header(data)
    if fh is None:
        raise NotAnImageError("the JPEG file cannot be decoded (no frame header); re-export it")
    if fh.rows == 0 or fh.cols == 0:
        raise CorruptHeaderError("the JPEG frame header declares an empty image; re-export it")
    _check_size(fh.pixels, fh.pixels * max(fh.components, 1), len(data), limits)
    if fh.marker not in _PILLOW_JPEG_SOF:
        raise CodecUnavailableError(
            f"this JPEG uses a process (SOF marker 0x{fh.marker:02X}: lossless, hierarchical or "
            "JPEG-LS) that the raster reader does not decode; send PNG, baseline JPEG or DICOM"
        )
    if fh.precision != 8:
        raise UnsupportedBitDepthError(
            f"{fh.precision}-bit JPEG: the raster reader decodes 8-bit JPEG only and would "
            "lose bits; send a 16-bit greyscale PNG or the DICOM"
        )
    return 8


def _pillow_open(data: bytes, kind: str) -> Image.Image:
    """Open and fully decode with Pillow; every failure becomes a typed refusal."""
    try:
        img = Image.open(io.BytesIO(data), formats=[kind.upper()])
        img.load()
        return img
    except Image.DecompressionBombError as exc:
        raise DecompressionBombError(
            f"PIL refused the image as a decompression bomb ({exc}); send the original radiograph"
        ) from exc
    except UnidentifiedImageError as exc:
        raise NotAnImageError(f"the {kind.upper()} file cannot be decoded; re-export it") from exc
    except MemoryError:
        raise
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise TruncatedPixelDataError(
                f"the {kind.upper()} file is truncated; it was cut off in transfer: send it again"
            ) from exc
        raise CorruptPixelDataError(
            f"the {kind.upper()} file cannot be decoded ({exc}); re-export it"
        ) from exc
    except Exception as exc:  # Pillow's plugins raise ValueError, SyntaxError, struct.error...
        raise _PillowFailure(exc) from exc


class _PillowFailure(Exception):
    """Pillow failed on something other than the pixel stream (e.g. an ancillary chunk)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _pillow_decode(data: bytes, kind: str) -> Image.Image:
    try:
        return _pillow_open(data, kind)
    except _PillowFailure as failure:
        first = failure.cause
    if kind == "png":
        # Ancillary chunks hold no samples: decode the critical chunks alone (ISO/IEC 15948
        # 12.1 lets a decoder ignore ancillary chunks it cannot use).
        critical, cut = png_critical_chunks(data)
        if cut and b"IDAT" not in critical:
            raise TruncatedPixelDataError(
                "the PNG file ends before its image data; it was cut off in transfer: send it "
                "again"
            )
        try:
            img = _pillow_open(critical, kind)
        except _PillowFailure:
            pass
        else:
            log.info("PNG decoded without its ancillary chunks (%s)", type(first).__name__)
            return img
    raise CorruptPixelDataError(
        f"the {kind.upper()} file cannot be decoded ({type(first).__name__}: "
        f"{str(first)[:160]}); re-export it"
    ) from first


def _read_raster(data: bytes, kind: str, limits: ImageLimits) -> DecodedImage:
    bit_depth = _raster_header(data, kind, limits)
    img = _pillow_decode(data, kind)
    try:
        img = ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception as exc:  # corrupt EXIF: the orientation of the image is unknown
        raise CorruptHeaderError(
            f"the EXIF orientation of the {kind.upper()} cannot be read ({type(exc).__name__}); "
            "re-export the image without EXIF"
        ) from exc
    pixels = _raster_to_grey(img, bit_depth)
    meta = ImageMeta(
        format=kind,
        rows=pixels.shape[0],
        cols=pixels.shape[1],
        photometric="MONOCHROME2",
        bits_stored=16 if bit_depth == 16 else 8,
    )
    return DecodedImage(pixels=pixels, meta=meta)


def _raster_to_grey(img: Image.Image, bit_depth: int) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # Samples of a 16-bit PNG are scaled to the full 0..65535 range (ISO/IEC 15948 12.5).
        top = np.float32(2**bit_depth - 1)
        return np.clip(np.asarray(img).astype(np.float32) / top, 0.0, 1.0)
    if mode in ("L", "1"):
        return np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255.0)
    if mode in ("LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
        spread = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())
        if spread > _GREY_TOLERANCE:
            raise UnsupportedImageTypeError(
                f"colour image (mode {mode}, channels differ by {spread:.1f} levels on average); "
                "radiographs are grey: send the original grey image"
            )
        return rgb.mean(axis=2) / np.float32(255.0)
    raise UnsupportedImageTypeError(
        f"unsupported image mode {mode}; send an 8- or 16-bit grey PNG or JPEG, or DICOM"
    )


# -- inspection ----------------------------------------------------------------------------------


def inspect_image(
    source: str | os.PathLike[str] | bytes, limits: ImageLimits = ImageLimits()
) -> dict[str, object]:
    """Whether a file is usable, why not, and its PHI-free metadata (``cxr-triage inspect``).

    Never raises for a bad file: a refusal is a report with ``usable`` False, its ``reason``
    and ``message``, plus whatever metadata the header still gives.
    """
    name = "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else str(source)
    report: dict[str, object] = {"file": name, "usable": True, "reason": "", "message": ""}
    meta: ImageMeta | None = None
    try:
        meta = read_image(source, limits).meta
    except InvalidImageError as exc:
        report.update(usable=False, reason=exc.reason, message=str(exc))
        meta = _header_meta(source, limits)
    if meta is not None:
        report.update(meta.to_dict())
    return report


def _header_meta(source: str | os.PathLike[str] | bytes, limits: ImageLimits) -> ImageMeta | None:
    """Best-effort metadata of a refused file, without decoding pixels (same guards)."""
    try:
        data = load_bytes(source, limits)
        kind = sniff_format(data)
        if kind == "png":
            hdr = png_header(data)
            return None if hdr is None else ImageMeta(format=kind, rows=hdr.height, cols=hdr.width)
        if kind == "jpeg":
            fh = jpeg_frame_header(data)
            return None if fh is None else ImageMeta(format=kind, rows=fh.rows, cols=fh.cols)
        return dicom_meta(_parse(io.BytesIO(data), len(data), limits, header_only=True).ds)
    except Exception:  # noqa: BLE001 - metadata of a broken file is optional; the refusal stands
        return None
