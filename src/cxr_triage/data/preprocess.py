"""Deterministic preprocessing shared by training and serving (one implementation).

A decoded radiograph (float32 in [0, 1], MONOCHROME2 convention: air dark, bone bright, at its
native resolution) becomes the canonical training representation: a square ``uint8`` array of
``image_size`` pixels. Every stored dataset (``data/ingest/pixels.npy``) and every scored image
scores goes through :func:`prepare_image`; models then see :func:`to_model_input` of those arrays.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import numpy as np
from PIL import Image

__all__ = [
    "MODEL_INPUT_MEAN",
    "MODEL_INPUT_STD",
    "iter_model_input",
    "prepare_image",
    "to_model_input",
]

# Fixed (not fitted) so that the mapping can never depend on a split; stored with every model.
MODEL_INPUT_MEAN = 0.5
MODEL_INPUT_STD = 0.25
# Robust contrast stretch: a few saturated pixels (markers, wires) must not set the range.
_LOW_PERCENTILE, _HIGH_PERCENTILE = 0.5, 99.5
# Two batches in flight: one being converted while the model consumes the other.
_PREFETCH = 2
_DONE = object()


def prepare_image(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """Resize a decoded radiograph to the training representation.

    The image is padded to a square with its own edge value (no aspect distortion), area-resized
    (anti-aliased, so a 2048 px image keeps fine texture as averaged intensity), then contrast
    stretched between robust percentiles and quantised to ``uint8``.

    Args:
        pixels: 2-D float32 array in [0, 1], MONOCHROME2 convention.
        image_size: side of the square output.

    Returns:
        ``uint8`` array of shape ``(image_size, image_size)``.
    """
    if pixels.ndim != 2:
        raise ValueError(f"prepare_image expects a 2-D array, got shape {pixels.shape}")
    rows, cols = pixels.shape
    side = max(rows, cols)
    if rows != cols:
        # Pad with the median border value so the padding looks like the image background.
        pad_value = float(
            np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]))
        )
        square = np.full((side, side), pad_value, dtype=np.float32)
        top, left = (side - rows) // 2, (side - cols) // 2
        square[top : top + rows, left : left + cols] = pixels
        pixels = square
    if side != image_size:
        # PIL's BOX filter on mode "F" is an exact area average in C (fast, no float64 copies).
        small = np.asarray(
            Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F").resize(
                (image_size, image_size), Image.Resampling.BOX
            ),
            dtype=np.float32,
        )
    else:
        small = pixels.astype(np.float32, copy=False)
    low, high = np.percentile(small, [_LOW_PERCENTILE, _HIGH_PERCENTILE])
    scale = 255.0 / max(float(high - low), 1e-6)
    out = (small - np.float32(low)) * np.float32(scale)
    np.clip(out, 0.0, 255.0, out=out)
    return np.rint(out).astype(np.uint8)


def to_model_input(batch: np.ndarray) -> np.ndarray:
    """Map ``uint8`` images ``(B, S, S)`` or ``(S, S)`` to normalised float32 ``(B, 1, S, S)``."""
    if batch.ndim == 2:
        batch = batch[None]
    x = batch.astype(np.float32)[:, None] / np.float32(255.0)
    return (x - np.float32(MODEL_INPUT_MEAN)) / np.float32(MODEL_INPUT_STD)


def iter_model_input(
    images: np.ndarray, batch_size: int, *, prefetch: int = _PREFETCH
) -> Iterator[np.ndarray]:
    """Yield normalised float32 batches ``(b, 1, S, S)`` converted in a background thread.

    Args:
        images: ``uint8`` ``(N, S, S)``; may be a memory map, read one batch at a time.
        batch_size: images per batch.
        prefetch: batches converted ahead of the consumer.

    Returns:
        An iterator over batches in order; the worker's exceptions are re-raised here.
    """
    slots: queue.Queue[object] = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def work() -> None:
        try:
            for start in range(0, len(images), batch_size):
                if stop.is_set():
                    return
                batch = to_model_input(np.asarray(images[start : start + batch_size]))
                slots.put(batch)
            slots.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slots.put(exc)

    worker = threading.Thread(target=work, name="embed-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # Unblock a worker waiting on a full queue so that it can see `stop` and exit.
        with contextlib.suppress(queue.Empty):
            while True:
                slots.get_nowait()
        worker.join(timeout=5)
