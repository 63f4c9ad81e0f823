"""Embeddings of stored images from a frozen backbone (the transfer route's features).

Batches come from :func:`~cxr_triage.data.preprocess.iter_model_input`, converted from
``uint8`` in a background thread while the model runs on the previous batch.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cxr_triage.data.preprocess import iter_model_input
from cxr_triage.errors import ConfigError
from cxr_triage.models.weights import OnnxEmbedder, export_onnx

__all__ = ["EMBED_MODES", "embed_images"]

logger = logging.getLogger(__name__)

EMBED_MODES: tuple[str, ...] = ("eager", "channels_last", "bfloat16", "onnx")


def _check_images(images: np.ndarray) -> None:
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ConfigError(f"images must be square (N, S, S) arrays, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ConfigError(
            f"images must be uint8 as stored by ingest (prepare_image), got {images.dtype}"
        )


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    if num_threads is None:
        yield
        return
    if num_threads < 1:
        raise ConfigError(f"num_threads must be >= 1 or None, got {num_threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embed_images(
    model: nn.Module | OnnxEmbedder,
    images: np.ndarray,
    *,
    batch_size: int = 64,
    mode: str | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embed stored images with a frozen model.

    The model is run in eval mode under ``torch.inference_mode()`` and put back in the mode it
    was in. The same input and settings always give identical output.

    Args:
        model: a :class:`~cxr_triage.models.networks.Backbone` (or any module mapping
            ``(B, 1, S, S)`` to ``(B, D)``), or an :class:`OnnxEmbedder`.
        images: ``uint8`` ``(N, S, S)``, e.g. ``np.load("pixels.npy", mmap_mode="r")``.
        batch_size: images per forward pass.
        mode: ``"eager"`` (float32), ``"channels_last"`` (float32, NHWC kernels),
            ``"bfloat16"`` (CPU/GPU autocast; results differ slightly from float32) or
            ``"onnx"`` (onnxruntime; a torch model is exported to a temporary file first).
            None means ``"onnx"`` for an :class:`OnnxEmbedder` and ``"eager"`` otherwise.
        num_threads: torch threads for this call (restored afterwards); None keeps the setting.
        progress: show a tqdm progress bar.

    Returns:
        float32 ``(N, D)``.

    Raises:
        ConfigError: on a bad mode, batch size or image array.
    """
    is_onnx = isinstance(model, OnnxEmbedder)
    mode = mode if mode is not None else ("onnx" if is_onnx else "eager")
    if mode not in EMBED_MODES:
        raise ConfigError(f"unknown embed mode {mode!r}; choose one of {', '.join(EMBED_MODES)}")
    if is_onnx and mode != "onnx":
        raise ConfigError(f"an ONNX model can only run with mode='onnx', not {mode!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    _check_images(images)
    if mode == "onnx" and not is_onnx:
        with tempfile.TemporaryDirectory(prefix="cxr-embed-") as tmp:
            onnx_path = export_onnx(model, Path(tmp) / "backbone.onnx", images.shape[1])
            embedder = OnnxEmbedder(onnx_path, num_threads=num_threads)
            return _embed_onnx(embedder, images, batch_size, progress)
    if is_onnx:
        return _embed_onnx(model, images, batch_size, progress)
    with _torch_threads(num_threads):
        return _embed_torch(model, images, batch_size, mode, progress)


def _progress_bar(n: int, progress: bool) -> tqdm:
    return tqdm(total=n, desc="embed", unit="img", disable=not progress, leave=False)


def _embed_onnx(
    embedder: OnnxEmbedder, images: np.ndarray, batch_size: int, progress: bool
) -> np.ndarray:
    parts: list[np.ndarray] = []
    with _progress_bar(len(images), progress) as bar:
        for batch in iter_model_input(images, batch_size):
            parts.append(embedder.embed(batch))
            bar.update(len(batch))
    return _concat(parts, embedder.embedding_dim)


def _concat(parts: list[np.ndarray], dim: int | None) -> np.ndarray:
    if not parts:
        return np.zeros((0, dim or 0), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def _embed_torch(
    model: nn.Module, images: np.ndarray, batch_size: int, mode: str, progress: bool
) -> np.ndarray:
    device = next(model.parameters()).device
    channels_last = mode == "channels_last"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if mode == "bfloat16"
        else contextlib.nullcontext()
    )
    parts: list[np.ndarray] = []
    try:
        with torch.inference_mode(), autocast, _progress_bar(len(images), progress) as bar:
            for batch in iter_model_input(images, batch_size):
                x = torch.from_numpy(batch).to(device, memory_format=memory_format)
                out = model(x).float().reshape(len(batch), -1)
                parts.append(out.cpu().numpy())
                bar.update(len(batch))
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    return _concat(parts, getattr(model, "embedding_dim", None))
