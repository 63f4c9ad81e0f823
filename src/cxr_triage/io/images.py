"""One entry point for pixels: :func:`read_image` sniffs the content (not the file extension)
and reads DICOM, PNG or JPEG into a :class:`DecodedImage`.

Raster rules (PNG/JPEG): 8- and 16-bit grey are read as they are (scaled by their bit depth);
RGB/RGBA/palette/grey+alpha images are accepted only when their colour channels agree (a grey
radiograph saved in a colour mode, as many exported PNGs are) and refused as colour otherwise;
alpha is dropped; EXIF orientation is applied. PNG/JPEG carry no acquisition metadata, so
modality, view, sex and age are empty unless a labels table supplies them.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_triage.errors import (
    DecompressionBombError,
    InvalidImageError,
    NotAnImageError,
    TruncatedPixelDataError,
    UnsupportedImageTypeError,
)
from cxr_triage.io.dicom import _check_size, read_dicom
from cxr_triage.io.records import DecodedImage, ImageLimits, ImageMeta

__all__ = ["inspect_image", "read_image", "sniff_format"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Mean absolute difference (in 8-bit levels) between colour channels below which an RGB file is
# treated as a grey radiograph saved in a colour mode.
_GREY_TOLERANCE = 2.0


def _head(source: str | os.PathLike[str] | bytes, n: int = 132) -> bytes:
    if isinstance(source, bytes):
        return source[:n]
    with open(source, "rb") as fh:
        return fh.read(n)


def sniff_format(source: str | os.PathLike[str] | bytes) -> str:
    """'dicom', 'png', 'jpeg' or 'unknown', from the first bytes of the content."""
    head = _head(source)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    return "unknown"


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
        InvalidImageError: a subclass saying what is wrong and what to send instead.
    """
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise NotAnImageError(f"no such file: {source}")
    try:
        kind = sniff_format(source)
    except OSError as exc:
        raise NotAnImageError(f"cannot read the file ({exc})") from exc
    if kind == "dicom":
        return read_dicom(source, limits)
    if kind in ("png", "jpeg"):
        return _read_raster(source, kind, limits)
    if len(_head(source)) == 0:
        raise NotAnImageError("the file is empty; send a DICOM, PNG or JPEG image")
    # DICOM without the 128-byte preamble (old ACR-NEMA style exports) is still DICOM; accept it
    # only if it parses to something with pixels, so random bytes are never taken for an image.
    ds = _try_preambleless_dicom(source)
    if ds is not None:
        return read_dicom(source, limits, dataset=ds)
    raise NotAnImageError(
        "not an image: the content is neither DICOM, PNG nor JPEG; send one of those formats"
    )


def _try_preambleless_dicom(source: str | os.PathLike[str] | bytes):  # noqa: ANN202
    import pydicom

    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        ds = pydicom.dcmread(fp, force=True)
    except Exception:  # noqa: BLE001 - any parse failure means "not DICOM" here, by design
        return None
    if "PixelData" in ds and "Rows" in ds and "Columns" in ds and "Modality" in ds:
        if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
            from pydicom.uid import (
                ExplicitVRBigEndian,
                ExplicitVRLittleEndian,
                ImplicitVRLittleEndian,
            )

            # The encoding pydicom detected while parsing; native pixel bytes follow it (a
            # big-endian file tagged little-endian would decode to byte-swapped noise).
            implicit, little = ds.original_encoding
            ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian
                if implicit is not False
                else ExplicitVRLittleEndian
                if little is not False
                else ExplicitVRBigEndian
            )
        return ds
    return None


def _read_raster(
    source: str | os.PathLike[str] | bytes, kind: str, limits: ImageLimits
) -> DecodedImage:
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    file_size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    try:
        with warnings.catch_warnings():
            # PIL warns above its own pixel limit; ours is checked just below and is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
            try:
                cols, rows = img.size
                _check_size(rows * cols, rows * cols * len(img.getbands()), file_size, limits)
                img.load()
            except BaseException:
                img.close()  # a refused file opened from a path would otherwise stay open
                raise
    except Image.DecompressionBombError as exc:
        raise DecompressionBombError(
            f"PIL refused the image as a decompression bomb ({exc}); send the original radiograph"
        ) from exc
    except UnidentifiedImageError as exc:
        raise NotAnImageError(f"the {kind.upper()} file cannot be decoded; re-export it") from exc
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise TruncatedPixelDataError(
                f"the {kind.upper()} file is truncated; it was cut off in transfer: send it again"
            ) from exc
        raise NotAnImageError(f"the {kind.upper()} file cannot be decoded ({exc})") from exc
    img = ImageOps.exif_transpose(img)
    pixels = _raster_to_grey(img)
    meta = ImageMeta(
        format=kind,
        rows=pixels.shape[0],
        cols=pixels.shape[1],
        photometric="MONOCHROME2",
        bits_stored=16 if img.mode.startswith("I") else 8,
    )
    return DecodedImage(pixels=pixels, meta=meta)


def _raster_to_grey(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        top = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
        return np.clip(arr.astype(np.float32) / np.float32(top), 0.0, 1.0)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / max(hi - lo, 1e-6)
    if mode in ("L", "1"):
        return np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255.0)
    if mode in ("LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
        spread = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())
        if spread > _GREY_TOLERANCE:
            raise UnsupportedImageTypeError(
                f"colour image (mode {mode}, channels differ by {spread:.1f} levels on average); "
                "radiographs are grey: send the original grey image"
            )
        return rgb.mean(axis=2) / np.float32(255.0)
    raise InvalidImageError(
        f"unsupported image mode {mode}; send an 8- or 16-bit grey PNG or JPEG, or DICOM",
        reason="unsupported_image_type",
    )


def inspect_image(
    source: str | os.PathLike[str], limits: ImageLimits = ImageLimits()
) -> dict[str, object]:
    """Whether a file is usable, why not, and its PHI-free metadata (``cxr-triage inspect``)."""
    report: dict[str, object] = {"file": str(source), "usable": True, "reason": "", "message": ""}
    meta: ImageMeta | None = None
    try:
        meta = read_image(source, limits).meta
    except InvalidImageError as exc:
        report.update(usable=False, reason=exc.reason, message=str(exc))
        meta = _header_meta(source)
    if meta is not None:
        report.update(meta.to_dict())
    return report


def _header_meta(source: str | os.PathLike[str]) -> ImageMeta | None:
    """Best-effort metadata of a refused file, without decoding pixels."""
    try:
        kind = sniff_format(source)
        if kind == "dicom":
            import pydicom

            from cxr_triage.io.dicom import dicom_meta

            return dicom_meta(pydicom.dcmread(source, stop_before_pixels=True))
        if kind in ("png", "jpeg"):
            with Image.open(source) as img:
                return ImageMeta(format=kind, rows=img.size[1], cols=img.size[0])
    except Exception:  # noqa: BLE001 - metadata of a broken file is optional; the refusal stands
        return None
    return None
