"""The DICOM reader's entry points: parse, judge, check, decode, grey levels, in that order."""

from __future__ import annotations

import os
from typing import BinaryIO

from pydicom.dataset import Dataset

from cxr_triage.io.dicom.checks import (
    check_pixel_data,
    judge_image,
    judge_subject,
    transfer_syntax,
)
from cxr_triage.io.dicom.header import PixelHeader, dicom_identifiers, dicom_meta
from cxr_triage.io.dicom.parse import parse_dicom
from cxr_triage.io.dicom.pixels import decode_pixels, to_display
from cxr_triage.io.records import DecodedImage, ImageLimits
from cxr_triage.io.sources import guarded, open_source

__all__ = ["check_dicom", "decode_dicom", "read_dicom", "read_dicom_dataset"]


def decode_dicom(fp: BinaryIO, size: int, limits: ImageLimits) -> DecodedImage:
    """Read a DICOM chest radiograph from an open file or buffer (the reader's DICOM path).

    Args:
        fp: the content, seekable; read from its start.
        size: its length in bytes.
        limits: what to refuse before decoding.

    Raises:
        InvalidImageError: a subclass saying why the file cannot be used.
    """
    ds, header = check_dicom(fp, size, limits)
    stored = decode_pixels(ds, header)
    return DecodedImage(
        pixels=to_display(header, stored), meta=dicom_meta(ds), identifiers=dicom_identifiers(ds)
    )


def check_dicom(fp: BinaryIO, size: int, limits: ImageLimits) -> tuple[Dataset, PixelHeader]:
    """Everything before decoding: parse, judge the subject and the image, check the pixel data.

    Raises:
        InvalidImageError: a subclass saying why the file cannot be used.
    """
    parsed = parse_dicom(fp, size, limits)
    ds = parsed.ds
    judge_subject(ds, limits, parsed.pixels_cut)
    ts = transfer_syntax(ds)
    header = judge_image(ds, limits, size)
    check_pixel_data(ds, header, ts, limits, size)
    return ds, header


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

    def read() -> DecodedImage:
        with open_source(source, limits) as (fp, size):
            return decode_dicom(fp, size, limits)

    return guarded(read)


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
    with open_source(source, limits) as (fp, size):
        return parse_dicom(fp, size, limits).ds
