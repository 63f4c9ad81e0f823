"""DICOM radiographs: read only what a chest radiograph reader can trust.

Each refusal raises an :class:`~cxr_triage.errors.InvalidImageError` subclass (reasons in
:mod:`cxr_triage.errors`). The steps, one module each, in the order :func:`decode_dicom` runs
them:

- :mod:`~cxr_triage.io.dicom.parse`: bounded parsing (file meta, truncation, deflate, element
  count); a data set without preamble and file meta is DICOM too;
- :mod:`~cxr_triage.io.dicom.header`: typed header values, PHI-free metadata, identifiers and
  the pixel header (bit layout, rescale, window, LUTs, padding);
- :mod:`~cxr_triage.io.dicom.checks`: the judgement before decoding (modality, size, frames,
  photometric interpretation, transfer syntax and decoder, the codec's own frame header);
- :mod:`~cxr_triage.io.dicom.pixels`: decoding and the grey-level pipeline;
- :mod:`~cxr_triage.io.dicom.read`: the entry points below.
"""

from __future__ import annotations

from cxr_triage.io.dicom.header import dicom_meta, parse_age
from cxr_triage.io.dicom.read import decode_dicom, read_dicom, read_dicom_dataset

__all__ = ["decode_dicom", "dicom_meta", "parse_age", "read_dicom", "read_dicom_dataset"]
