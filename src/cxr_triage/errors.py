"""Every error a user can cause, as one hierarchy.

Each message says what is wrong and what to do about it. Catch the level you can handle::

    CxrError                         base; `cxr-triage` exits 1 with its message, no traceback
    ├── ConfigError                  params.yaml or a CLI option is wrong (names the key)
    ├── DataError                    a labels CSV, manifest or source folder is unusable
    │   └── LeakageError             one patient in two splits
    └── InvalidImageError            one file cannot be used as a chest radiograph; `.reason` is a
        │                            stable short code (rejects tables, HTTP bodies), and
        │                            `.http_status` the status the service answers with
        ├── NotAnImageError              not DICOM, PNG or JPEG, an empty or unreadable file
        ├── NoPixelDataError             DICOM without pixel data (SR, KO, stripped file)
        ├── UnsupportedModalityError     CT, MR, NM, SR, ... or a non-chest body part
        ├── UnsupportedImageTypeError    multi-frame, colour, unknown photometric interpretation,
        │   │                            pixel encodings the reader does not decode
        │   ├── UnsupportedBitDepthError     the decoder would lose bits (16-bit colour PNG,
        │   │                                12-bit JPEG outside DICOM)
        │   └── AmbiguousPolarityError       MONOCHROME2 with Presentation LUT Shape INVERSE
        ├── TruncatedPixelDataError      the file ends inside its pixel data
        ├── TruncatedHeaderError         the file ends inside its header (before the pixel data)
        ├── CorruptHeaderError           a header element the reader needs is unreadable or
        │   │                            inconsistent (IS/DS that are no numbers, wrong VR, several
        │   │                            values where one is allowed, LUT data vs descriptor...)
        │   └── MissingTransferSyntaxError   compressed pixel data but no Transfer Syntax UID
        ├── CorruptPixelDataError        the codec or Pillow cannot decode the pixel data
        ├── FrameSizeMismatchError       the codec's frame header disagrees with Rows/Columns/
        │                                SamplesPerPixel/BitsAllocated (checked before decoding)
        ├── CodecUnavailableError        compressed transfer syntax without an installed decoder
        ├── ImageTooLargeError           more pixels (or file bytes) than the configured limit
        ├── DecompressionBombError       a small input that would decode to far more memory
        └── QcFailedError                readable, but the input quality gate refuses it (lateral,
                                         inverted, rotated, not a chest, a child, too small...);
                                         ``.checks`` names the failed checks

Reasons and HTTP statuses (``InvalidImageError.http_status``; 400: the file is damaged, 413: it
asks for more memory than allowed, 415: a format or codec the reader does not take, 422: a
well-formed file that is not a usable chest radiograph):

======================== ====== ===============================================================
reason                   status meaning and what to send instead
======================== ====== ===============================================================
not_an_image             415    neither DICOM, PNG nor JPEG: send one of those
no_pixel_data            422    a DICOM object without an image: send the image object
wrong_modality           422    not CR/DX or not the chest: send a chest radiograph
unsupported_image_type   422    multi-frame, colour, or an unsupported pixel encoding
unsupported_bit_depth    422    decoding would drop bits: send 8/16-bit greyscale or DICOM
ambiguous_polarity       422    which way is bone cannot be told: re-export as MONOCHROME1/2
truncated_pixel_data     400    cut off inside the pixel data: send the file again
truncated_header         400    cut off inside the header: send the file again
corrupt_header           400    header elements unreadable or inconsistent: re-export
missing_transfer_syntax  400    compressed data without a Transfer Syntax UID: re-export
corrupt_pixel_data       400    the decoder fails on the pixel data: re-export
frame_size_mismatch      422    the compressed frame is not the image the header describes
codec_unavailable        415    no decoder installed for the transfer syntax
image_too_large          413    over ``ImageLimits.max_pixels`` / ``max_file_bytes``
decompression_bomb       413    would inflate far beyond its size or its header's dimensions
qc_failed                422    the quality gate refuses it (``.checks``): send a frontal adult
                                chest radiograph, upright and not inverted
invalid_image            422    the reader failed unexpectedly on this file (a bug: report it)
======================== ====== ===============================================================
"""

from __future__ import annotations

__all__ = [
    "AmbiguousPolarityError",
    "CodecUnavailableError",
    "ConfigError",
    "CorruptHeaderError",
    "CorruptPixelDataError",
    "CxrError",
    "DataError",
    "DecompressionBombError",
    "FrameSizeMismatchError",
    "ImageTooLargeError",
    "InvalidImageError",
    "LeakageError",
    "MissingTransferSyntaxError",
    "NoPixelDataError",
    "NotAnImageError",
    "QcFailedError",
    "TruncatedHeaderError",
    "TruncatedPixelDataError",
    "UnsupportedBitDepthError",
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

    The reader raises only subclasses; a bare ``InvalidImageError`` (reason ``invalid_image``)
    means it failed in a way nobody foresaw (see :func:`cxr_triage.io.images.read_image`).

    Args:
        message: what is wrong and what to send instead.
        reason: stable short code (``not_an_image``, ``wrong_modality``...); defaults to the
            class's own.
    """

    reason = "invalid_image"
    http_status = 422

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class NotAnImageError(InvalidImageError):
    reason = "not_an_image"
    http_status = 415


class NoPixelDataError(InvalidImageError):
    reason = "no_pixel_data"
    http_status = 422


class UnsupportedModalityError(InvalidImageError):
    reason = "wrong_modality"
    http_status = 422


class UnsupportedImageTypeError(InvalidImageError):
    reason = "unsupported_image_type"
    http_status = 422


class UnsupportedBitDepthError(UnsupportedImageTypeError):
    reason = "unsupported_bit_depth"
    http_status = 422


class AmbiguousPolarityError(UnsupportedImageTypeError):
    reason = "ambiguous_polarity"
    http_status = 422


class TruncatedPixelDataError(InvalidImageError):
    reason = "truncated_pixel_data"
    http_status = 400


class TruncatedHeaderError(InvalidImageError):
    reason = "truncated_header"
    http_status = 400


class CorruptHeaderError(InvalidImageError):
    reason = "corrupt_header"
    http_status = 400


class MissingTransferSyntaxError(CorruptHeaderError):
    reason = "missing_transfer_syntax"
    http_status = 400


class CorruptPixelDataError(InvalidImageError):
    reason = "corrupt_pixel_data"
    http_status = 400


class FrameSizeMismatchError(InvalidImageError):
    reason = "frame_size_mismatch"
    http_status = 422


class CodecUnavailableError(InvalidImageError):
    reason = "codec_unavailable"
    http_status = 415


class ImageTooLargeError(InvalidImageError):
    reason = "image_too_large"
    http_status = 413


class DecompressionBombError(InvalidImageError):
    reason = "decompression_bomb"
    http_status = 413


class QcFailedError(InvalidImageError):
    """The input quality gate refuses the image (see :mod:`cxr_triage.inference.qc`).

    Args:
        message: which checks failed, with their values, and what to send instead.
        checks: the names of the failed checks that refuse (e.g. ``("view",)``).
    """

    reason = "qc_failed"
    http_status = 422

    def __init__(self, message: str, *, checks: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.checks = tuple(checks)
