"""Self-supervised contrastive pretraining of a backbone (SimCLR-style), with checkpoint/resume.

Method (Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020): each image of a batch gets two random views
(:func:`~cxr_triage.models.augment.augment_batch` with stronger ranges); the backbone and a
small projection head map both to unit vectors, and the NT-Xent loss pulls the two views of an
image together and pushes the other ``2B - 2`` views of the batch away. No label is used, so
every radiograph the user has can take part (the ``backbone`` stage leaves out the run's test
patients). The projection head is discarded; the backbone then goes on to the supervised
14-finding pretraining.

The loop shares :mod:`cxr_triage.models.finetune`'s machinery: per-epoch seeded generators
(a resumed run computes what an uninterrupted one does), atomic checkpoints every epoch,
fingerprint checks, fixed thread counts, deterministic algorithms, the GPU and mixed precision
when present.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn

from cxr_triage.config import SslParams
from cxr_triage.errors import ConfigError
from cxr_triage.models.augment import augment_batch
from cxr_triage.models.finetune import (
    _amp_settings,
    _atomic_save,
    _deterministic,
    _epoch_seed,
    _resume,
    _rng_state,
    _threads,
    resolve_device,
)

__all__ = ["SslResult", "nt_xent", "pretrain_contrastive"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
_FORMAT = "cxr_triage.ssl/1"


@dataclass(frozen=True)
class SslResult:
    """Outcome of :func:`pretrain_contrastive`.

    Attributes:
        epochs_completed: epochs in total, across resumes.
        history: per epoch ``epoch``, ``loss``, ``lr``, ``seconds``.
        resumed_from_epoch: epochs found in the checkpoint at start.
        n_images: images in the pool.
        device: where it trained.
    """

    epochs_completed: int
    history: tuple[dict[str, float], ...]
    resumed_from_epoch: int
    n_images: int
    device: str


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss of two views ``(B, d)`` of the same batch (SimCLR, eq. 1)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    similarity = z @ z.T / temperature
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -1e9)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, targets)


def _projection_head(embedding_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(embedding_dim, embedding_dim),
        nn.ReLU(inplace=True),
        nn.Linear(embedding_dim, out_dim),
    )


def pretrain_contrastive(
    backbone: nn.Module,
    images: np.ndarray,
    options: SslParams,
    *,
    seed: int,
    checkpoint_dir: Path,
    device: str | torch.device = "auto",
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> SslResult:
    """Pretrain ``backbone`` in place on unlabelled images.

    A checkpoint of the same run (options, seed, pool size, architecture) in
    ``checkpoint_dir`` is resumed after its last completed epoch; a finished run returns at
    once with the backbone holding its final weights.

    Args:
        backbone: a :class:`~cxr_triage.models.networks.Backbone` (moved to ``device``).
        images: ``uint8`` ``(N, S, S)`` (may be a memory map), ``N >= 2``.
        options: the ``backbone.ssl`` section.
        seed: seeds the projection head, shuffling and views.
        checkpoint_dir: folder of ``last.pt``.
        device: ``"auto"`` (GPU when present), ``"cpu"`` or ``"cuda"``.
        on_epoch_end: called with each epoch's record after its checkpoint is written.

    Returns:
        The run's outcome.

    Raises:
        ConfigError: bad images, or a checkpoint of another run in ``checkpoint_dir``.
    """
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) < 2:
        raise ConfigError(
            f"SSL needs >= 2 uint8 (N, S, S) images, got {images.dtype} {images.shape}"
        )
    target = resolve_device(device)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    head = _projection_head(int(backbone.embedding_dim), options.projection_dim)
    with _threads(options.num_threads), _deterministic():
        return _pretrain(
            backbone, head, images, options, seed, checkpoint_dir, target, on_epoch_end
        )


def _pretrain(
    backbone: nn.Module,
    head: nn.Module,
    images: np.ndarray,
    options: SslParams,
    seed: int,
    checkpoint_dir: Path,
    device: torch.device,
    on_epoch_end: Callable[[dict[str, float]], None] | None,
) -> SslResult:
    last_path = checkpoint_dir / LAST_CHECKPOINT
    backbone.to(device)
    head.to(device)
    parameters = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
    amp_dtype, use_scaler = _amp_settings(options, device)  # type: ignore[arg-type]
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    fingerprint: dict[str, Any] = {
        k: v if isinstance(v, int | float | str | bool | None) else repr(v)
        for k, v in asdict(options).items()
        if k != "num_threads"
    }
    fingerprint.update(
        seed=seed,
        n_images=len(images),
        image_size=int(images.shape[-1]),
        arch=str(getattr(backbone, "arch", type(backbone).__name__)),
    )
    state: dict[str, Any] = {"epoch": 0, "history": []}
    stateful = {"backbone": backbone, "head": head, "optimizer": optimizer}
    stateful.update(scheduler=scheduler, scaler=scaler)
    saved = _resume(last_path, _FORMAT, fingerprint, stateful, device)
    if saved is not None:
        state = {"epoch": saved["epoch"], "history": saved["history"]}
    resumed_from = state["epoch"]
    n = len(images)
    while state["epoch"] < options.epochs:
        epoch, start = state["epoch"], time.monotonic()
        epoch_seed = _epoch_seed(seed, epoch)
        torch.manual_seed(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        backbone.train()
        head.train()
        order = torch.randperm(n, generator=generator).numpy()
        total, seen = 0.0, 0
        for first in range(0, n, options.batch_size):
            index = np.sort(order[first : first + options.batch_size])
            if len(index) < 2:
                continue  # a single image has no negatives
            pixels = torch.from_numpy(np.asarray(images[index]))
            views = torch.cat(
                [
                    augment_batch(pixels, generator, options.augment),
                    augment_batch(pixels, generator, options.augment),
                ]
            ).to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with (
                torch.autocast(device.type, dtype=amp_dtype)
                if amp_dtype is not None
                else _null_context()
            ):
                z = head(backbone(views))
            loss = nt_xent(z[: len(index)], z[len(index) :], options.temperature)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(index)
            seen += len(index)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        state["epoch"] = epoch + 1
        record = {
            "epoch": float(epoch + 1),
            "loss": total / max(seen, 1),
            "lr": float(lr),
            "seconds": time.monotonic() - start,
        }
        state["history"] = [*state["history"], record]
        _atomic_save(
            {
                "format": _FORMAT,
                "fingerprint": fingerprint,
                "backbone": backbone.state_dict(),
                "head": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(device),
                **state,
            },
            last_path,
        )
        logger.info(
            "SSL epoch %d/%d: NT-Xent %.4f (chance %.4f) in %.1f s",
            epoch + 1,
            options.epochs,
            record["loss"],
            math.log(2 * min(options.batch_size, n) - 1),
            record["seconds"],
        )
        if on_epoch_end is not None:
            on_epoch_end(record)
    backbone.eval()
    return SslResult(
        epochs_completed=state["epoch"],
        history=tuple(state["history"]),
        resumed_from_epoch=resumed_from,
        n_images=n,
        device=str(device),
    )


def _null_context() -> Any:
    import contextlib

    return contextlib.nullcontext()
