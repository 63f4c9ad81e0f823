"""Every error a user can cause, as one hierarchy.

Each message says what is wrong and what to do about it. Catch the level you can handle::

    CxrError                         base; `cxr-triage` exits 1 with its message, no traceback
    ├── ConfigError                  params.yaml or a CLI option is wrong (names the key)
    ├── DataError                    a labels CSV, manifest or source folder is unusable
    │   └── LeakageError             one patient in two splits
    └── InvalidImageError            one file cannot be used as a chest radiograph; `.reason` is a
        │                            short code used in rejects tables and HTTP 4xx
        ├── NotAnImageError              not DICOM, PNG or JPEG (or an unreadable file)
        ├── NoPixelDataError             DICOM without pixel data (SR, KO, stripped file)
        ├── UnsupportedModalityError     CT, MR, NM, SR, ... or a non-chest body part
        ├── UnsupportedImageTypeError    multi-frame, colour, unknown photometric interpretation
        ├── TruncatedPixelDataError      pixel data shorter than Rows x Columns x bits
        ├── CodecUnavailableError        compressed transfer syntax without an installed decoder
        ├── ImageTooLargeError           more pixels than the configured limit
        └── DecompressionBombError       compressed size wildly smaller than the decoded size
"""

from __future__ import annotations

__all__ = [
    "CodecUnavailableError",
    "ConfigError",
    "CxrError",
    "DataError",
    "DecompressionBombError",
    "ImageTooLargeError",
    "InvalidImageError",
    "LeakageError",
    "NoPixelDataError",
    "NotAnImageError",
    "TruncatedPixelDataError",
    "UnsupportedImageTypeError",
    "UnsupportedModalityError",
]


class CxrError(Exception):
    """Base class of every error cxr-triage raises on purpose."""


class ConfigError(CxrError):
    """A parameter or option is missing, unknown or of the wrong type."""


class DataError(CxrError):
    """A data source, labels table or manifest cannot be used."""


class LeakageError(DataError):
    """The same patient ended up in more than one split."""


class InvalidImageError(CxrError):
    """A file cannot be used as a chest radiograph.

    Args:
        message: what is wrong and what to send instead.
        reason: stable short code (``not_an_image``, ``wrong_modality``...).
    """

    reason = "invalid_image"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class NotAnImageError(InvalidImageError):
    reason = "not_an_image"


class NoPixelDataError(InvalidImageError):
    reason = "no_pixel_data"


class UnsupportedModalityError(InvalidImageError):
    reason = "wrong_modality"


class UnsupportedImageTypeError(InvalidImageError):
    reason = "unsupported_image_type"


class TruncatedPixelDataError(InvalidImageError):
    reason = "truncated_pixel_data"


class CodecUnavailableError(InvalidImageError):
    reason = "codec_unavailable"


class ImageTooLargeError(InvalidImageError):
    reason = "image_too_large"


class DecompressionBombError(InvalidImageError):
    reason = "decompression_bomb"
