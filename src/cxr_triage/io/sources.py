"""What every reader shares: the input opened within ``max_file_bytes``, a declared image size
checked against ``max_pixels`` before decoding, and the last guard (:func:`guarded`) that keeps
every failure of one file a typed refusal."""

from __future__ import annotations

import io
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

from cxr_triage.errors import (
    DecompressionBombError,
    ImageTooLargeError,
    InvalidImageError,
    NotAnImageError,
)
from cxr_triage.io.records import ImageLimits

__all__ = ["check_size", "guarded", "load_bytes", "open_source"]

log = logging.getLogger(__name__)

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


def check_size(n_pixels: int, decoded_bytes: int, file_size: int, limits: ImageLimits) -> None:
    """Refuse a declared image of more than ``limits.max_pixels`` pixels, before decoding.

    Args:
        n_pixels: pixels the header declares (rows x columns x frames).
        decoded_bytes: bytes those pixels would take once decoded.
        file_size: bytes of the file that declares them.
        limits: ``max_pixels`` and ``bomb_ratio``.

    Raises:
        DecompressionBombError: over the limit, and decoding would grow the file more than
            ``limits.bomb_ratio`` times.
        ImageTooLargeError: over the limit otherwise.
    """
    if n_pixels <= limits.max_pixels:
        return
    if file_size > 0 and decoded_bytes > limits.bomb_ratio * file_size:
        raise DecompressionBombError(
            f"declares {n_pixels:,} pixels from only {file_size:,} bytes (a decompression bomb); "
            "send the original radiograph"
        )
    raise ImageTooLargeError(
        f"{n_pixels:,} pixels exceeds the limit of {limits.max_pixels:,}; downsample the image "
        "or raise the configured max_pixels"
    )
