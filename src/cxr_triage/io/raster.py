"""PNG and JPEG radiographs: header first, then Pillow, then grey levels.

The PNG IHDR / JPEG SOF is read first, so size guards run before Pillow allocates anything.
1- to 16-bit grey is read as it is (scaled by its bit depth); RGB/RGBA/palette/grey+alpha images
are accepted only when their colour channels agree (a grey radiograph saved in a colour mode, as
many exported PNGs are) and refused as colour otherwise; alpha is dropped; EXIF orientation is
applied. Pillow reduces 16-bit colour-typed PNGs to 8 bits and cannot read 12-bit JPEG, so those
are refused (``unsupported_bit_depth``) rather than read with lost bits. A PNG whose ancillary
chunks Pillow rejects (an ICC profile inflating past ``PngImagePlugin.MAX_TEXT_CHUNK``, a
truncated pHYs: Pillow raises ValueError) is decoded from its critical chunks, which hold all
the samples. PNG/JPEG carry no acquisition metadata, so modality, view, sex and age are empty
unless a labels table supplies them.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_triage.errors import (
    CodecUnavailableError,
    CorruptHeaderError,
    CorruptPixelDataError,
    DecompressionBombError,
    NotAnImageError,
    TruncatedPixelDataError,
    UnsupportedBitDepthError,
    UnsupportedImageTypeError,
)
from cxr_triage.io.guards import jpeg_frame_header, png_critical_chunks, png_header
from cxr_triage.io.records import DecodedImage, ImageLimits, ImageMeta
from cxr_triage.io.sources import check_size

__all__ = ["read_raster"]

log = logging.getLogger(__name__)

# Mean absolute difference (in 8-bit levels) between colour channels below which an RGB file is
# treated as a grey radiograph saved in a colour mode.
_GREY_TOLERANCE = 2.0
# JPEG processes Pillow (libjpeg-turbo) decodes: baseline, extended, progressive, arithmetic.
_PILLOW_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC9, 0xCA})
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def read_raster(data: bytes, kind: str, limits: ImageLimits) -> DecodedImage:
    """Read a PNG or JPEG radiograph (the reader's raster path).

    Args:
        data: the file's bytes.
        kind: "png" or "jpeg", as sniffed from the content.
        limits: what to refuse before decoding.

    Raises:
        InvalidImageError: a subclass saying why the file cannot be used.
    """
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


def _raster_header(data: bytes, kind: str, limits: ImageLimits) -> int:
    """Check the PNG IHDR / JPEG SOF against the limits; returns the bit depth."""
    if kind == "png":
        return _png_header(data, limits)
    return _jpeg_header(data, limits)


def _png_header(data: bytes, limits: ImageLimits) -> int:
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
    check_size(n, n * hdr.channels * max(hdr.bit_depth, 8) // 8, len(data), limits)
    if hdr.bit_depth == 16 and hdr.colour_type != 0:
        what = "grey + alpha" if hdr.colour_type == 4 else "RGB/RGBA"
        raise UnsupportedBitDepthError(
            f"16-bit PNG with colour type {hdr.colour_type} ({what}): the decoder would "
            "reduce it to 8 bits; send a 16-bit greyscale PNG without alpha, or the DICOM"
        )
    return hdr.bit_depth


def _jpeg_header(data: bytes, limits: ImageLimits) -> int:
    fh = jpeg_frame_header(data)
    if fh is None:
        raise NotAnImageError("the JPEG file cannot be decoded (no frame header); re-export it")
    if fh.rows == 0 or fh.cols == 0:
        raise CorruptHeaderError("the JPEG frame header declares an empty image; re-export it")
    check_size(fh.pixels, fh.pixels * max(fh.components, 1), len(data), limits)
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
