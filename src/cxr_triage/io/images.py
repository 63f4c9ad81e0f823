"""One entry point for pixels: :func:`read_image` sniffs the content (not the file extension)
and reads DICOM (:mod:`cxr_triage.io.dicom`), PNG or JPEG (:mod:`cxr_triage.io.raster`) into a
:class:`DecodedImage`.

Whatever is wrong with a file, :func:`read_image` raises an
:class:`~cxr_triage.errors.InvalidImageError` subclass and nothing else (KeyboardInterrupt and
SystemExit still propagate): parsers and codecs are called inside narrow guards that turn their
failures into typed refusals, and a last guard (:func:`guarded`) turns anything unforeseen into
a bare ``InvalidImageError`` (reason ``invalid_image``), logged as a bug. The fuzzing harness
(``make fuzz``) fails on that bare class, so it proves the narrow guards complete.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

from cxr_triage.errors import InvalidImageError, NotAnImageError
from cxr_triage.io.dicom import decode_dicom, dicom_meta
from cxr_triage.io.dicom.parse import parse_dicom
from cxr_triage.io.guards import jpeg_frame_header, png_header
from cxr_triage.io.raster import read_raster
from cxr_triage.io.records import DecodedImage, ImageLimits, ImageMeta
from cxr_triage.io.sources import guarded, load_bytes, open_source

__all__ = ["guarded", "inspect_image", "load_bytes", "open_source", "read_image", "sniff_format"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


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
        return read_raster(fp.read(), kind, limits)
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
        return dicom_meta(parse_dicom(io.BytesIO(data), len(data), limits, header_only=True).ds)
    except Exception:  # noqa: BLE001 - metadata of a broken file is optional; the refusal stands
        return None
