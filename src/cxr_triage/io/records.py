"""What reading an image yields: pixels, PHI-free metadata, and identifiers kept apart."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cxr_triage.config import IngestParams

__all__ = ["DecodedImage", "Identifiers", "ImageLimits", "ImageMeta"]


@dataclass(frozen=True)
class ImageLimits:
    """Guards applied before any pixel is decoded (and before a deflated data set is inflated).

    Every way an input can ask for memory is checked against these numbers first: the file size,
    the DICOM header's Rows x Columns x NumberOfFrames, the frame header of the compressed
    codestream (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, the RLE segment lengths), the PNG IHDR
    and JPEG SOF of raster files, and the inflated size of a deflated DICOM data set.

    Args:
        max_pixels: largest accepted Rows x Columns x frames (DICOM header, codec frame header
            or PNG/JPEG header); larger images are refused as ``image_too_large`` (a 4k x 4k
            detector image has 17 M pixels, so the default of 40 M leaves ample room).
        bomb_ratio: an oversize image whose decoded size exceeds its file size by more than this
            factor is reported as a ``decompression_bomb`` rather than merely too large.
        max_file_bytes: largest file (or upload) read at all, in bytes; the default 256 MiB is
            three times an uncompressed 40 M pixel 16-bit image.
        max_inflated_bytes: largest size, in bytes, a deflated DICOM data set (Deflated Explicit
            VR Little Endian) may inflate to; the inflation is streamed and stops at this bound
            (default 256 MiB).
        max_header_elements: most top-level elements a DICOM data set may have (a radiograph
            has a few hundred; each element costs ~30 times its size in the file once parsed,
            so a file of tiny elements is a memory bomb of its own); default 50,000.
        allowed_modalities: DICOM Modality values accepted as projection chest radiographs.
        allowed_body_parts: accepted BodyPartExamined values; an empty or absent value is accepted
            because many CR/DX devices never fill it.
    """

    max_pixels: int = 40_000_000
    bomb_ratio: float = 100.0
    max_file_bytes: int = 256 * 2**20
    max_inflated_bytes: int = 256 * 2**20
    max_header_elements: int = 50_000
    allowed_modalities: tuple[str, ...] = ("CR", "DX")
    allowed_body_parts: tuple[str, ...] = ("CHEST", "THORAX", "LUNG", "CHEST_LAT", "CHESTPA")

    def __post_init__(self) -> None:
        # DICOM code strings are upper case; `[cr, dx]` in params.yaml or a package must not
        # refuse every CR/DX file as "wrong modality".
        for name in ("allowed_modalities", "allowed_body_parts"):
            values = tuple(str(v).strip().upper() for v in getattr(self, name))
            object.__setattr__(self, name, values)

    @classmethod
    def from_params(cls, ingest: IngestParams) -> ImageLimits:
        """The guards ``params.yaml`` ``ingest`` configures (the one place they are read)."""
        return cls(
            max_pixels=ingest.max_pixels,
            bomb_ratio=ingest.bomb_ratio,
            max_file_bytes=int(ingest.max_file_mb * 2**20),
            max_inflated_bytes=int(ingest.max_inflated_mb * 2**20),
            max_header_elements=ingest.max_header_elements,
            allowed_modalities=tuple(ingest.allowed_modalities),
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form, as a model package records the limits it was validated with."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ImageLimits:
        """Inverse of :meth:`to_dict`; keys it does not know are refused, missing ones default."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown image limit(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class ImageMeta:
    """Technical and demographic metadata that is safe to store and log (no PHI)."""

    format: str  # "dicom", "png" or "jpeg"
    rows: int
    cols: int
    modality: str = ""
    view_position: str = ""
    photometric: str = ""
    bits_stored: int = 8
    frames: int = 1
    samples_per_pixel: int = 1
    transfer_syntax: str = ""
    manufacturer: str = ""
    body_part: str = ""
    sex: str = ""  # "M", "F" or ""
    age_years: float | None = None
    # DICOM BurnedInAnnotation (YES/NO; "" when absent or not DICOM): text in the pixels may
    # identify the patient, so such images are never shown as thumbnails of similar cases.
    burned_in_annotation: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Identifiers:
    """Raw identifiers from the file header. PHI: pseudonymise at once, never store or log.

    ``repr`` is masked so that an accidental log line or traceback cannot leak them.
    """

    patient_id: str = field(default="", repr=False)
    study_uid: str = field(default="", repr=False)
    sop_instance_uid: str = field(default="", repr=False)


@dataclass(frozen=True)
class DecodedImage:
    """A radiograph ready for :func:`cxr_triage.data.preprocess.prepare_image`.

    ``pixels`` is float32 in [0, 1] at native resolution in MONOCHROME2 convention (air dark,
    bone bright): modality LUT, VOI LUT or window, and MONOCHROME1 inversion already applied.
    """

    pixels: np.ndarray = field(repr=False)
    meta: ImageMeta
    identifiers: Identifiers = field(default_factory=Identifiers, repr=False)
