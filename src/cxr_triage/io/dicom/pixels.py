"""Decoding DICOM pixel data, and stored values to grey levels.

Modality LUT (RescaleSlope/Intercept, or a Modality LUT Sequence), then the first VOI window or
VOI LUT, then MONOCHROME1 inversion (PS3.3 C.11.2). The common case (rescale and a linear
window) is one fused float32 multiply-add. Without a window the range is that of the stored
values, except padding (Pixel Padding Value / Range Limit), which never takes part in it and
comes out black (PS3.3 C.7.5.1.1.2). Compressed transfer syntaxes are decoded by pydicom's
plugins (pylibjpeg, pyjpegls, gdcm), only after :mod:`cxr_triage.io.dicom.checks`.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from cxr_triage.errors import CorruptPixelDataError, TruncatedPixelDataError
from cxr_triage.io.dicom.header import Lut, PixelHeader
from cxr_triage.io.dicom.parse import REEXPORT, exception_text

__all__ = ["decode_pixels", "to_display"]


def decode_pixels(ds: Dataset, h: PixelHeader) -> np.ndarray:
    """The stored values, (rows, cols), as pydicom's decoder gives them.

    Raises:
        TruncatedPixelDataError: the decoder ran out of data.
        CorruptPixelDataError: the decoder failed, or gave another shape than the header's.
    """
    try:
        stored = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:  # any codec plugin or pydicom failure on this file's data
        text = str(exc).lower()
        if "less than expected" in text or "truncat" in text:
            raise TruncatedPixelDataError(
                f"pixel data is truncated ({exception_text(exc)}); the file was cut off in "
                "transfer: send it again"
            ) from exc
        raise CorruptPixelDataError(
            f"pixel data cannot be decoded ({exception_text(exc)}); {REEXPORT} or send it "
            "uncompressed"
        ) from exc
    if stored.shape != (h.rows, h.cols):
        raise CorruptPixelDataError(
            f"decoded pixel array has shape {stored.shape}, not the header's "
            f"{h.rows} x {h.cols}; {REEXPORT}"
        )
    return stored


def to_display(h: PixelHeader, stored: np.ndarray) -> np.ndarray:
    """Stored values -> float32 in [0, 1], MONOCHROME2 convention, padding black."""
    pad = _padding_mask(h, stored)
    if h.modality_lut is None and h.voi_lut is None and h.voi_function != "SIGMOID":
        out = _linear_display(h, stored, pad)
    else:
        out = _lut_display(h, stored, pad)
    if pad is not None:
        out[pad] = 0.0  # padding is shown black, after any inversion
    return out


def _padding_mask(h: PixelHeader, stored: np.ndarray) -> np.ndarray | None:
    if h.padding is None:
        return None
    low, high = h.padding
    mask = stored == low if low == high else (stored >= low) & (stored <= high)
    return mask if mask.any() else None


def _linear_display(h: PixelHeader, stored: np.ndarray, pad: np.ndarray | None) -> np.ndarray:
    """Rescale, linear window (or the stored range) and inversion as one multiply-add."""
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
    return out


def _lut_display(h: PixelHeader, stored: np.ndarray, pad: np.ndarray | None) -> np.ndarray:
    """Modality LUT or rescale, then VOI LUT, sigmoid or linear window, in float64."""
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
    return 1.0 - out if h.invert else out


def _apply_lut(values: np.ndarray, lut: Lut) -> np.ndarray:
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
