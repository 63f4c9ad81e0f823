"""Train a :class:`~cxr_triage.models.networks.Classifier` end to end, with checkpoint/resume.

One loop serves both uses of the design: multi-label pretraining of a backbone on the finding
labels (targets ``(N, 14)``) and binary Normal/Abnormal fine-tuning (targets ``(N,)``). The
validation metric is AUROC (the mean over labels that have both classes in val, for multi-label);
early stopping watches it and the best weights are kept in ``best.pt``.

Reproducibility: every epoch draws its shuffling, augmentation and any dropout from generators
seeded by ``(seed, epoch)``, so a run resumed from the checkpoint of epoch ``k`` computes exactly
what an uninterrupted run computes from epoch ``k + 1`` on (same device and thread count).

Checkpoints (``last.pt``) are written after every epoch to a temporary file that then replaces
the old one, so a kill at any moment leaves either the previous or the new checkpoint, never a
torn one. Both files are read back with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from sklearn.metrics import roc_auc_score
from torch import nn

from cxr_triage.atomic import atomic_path
from cxr_triage.config import FinetuneOptions
from cxr_triage.data.folds import Fold, inner_holdout
from cxr_triage.data.preprocess import iter_model_input, to_model_input
from cxr_triage.errors import ConfigError
from cxr_triage.models.augment import augment_batch

__all__ = [
    "NetworkCV",
    "TrainResult",
    "cross_validate_network",
    "predict_logits",
    "predict_scores",
    "resolve_device",
    "train_classifier",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_WEIGHTS = "best.pt"
_CHECKPOINT_FORMAT = 1
# Options that change how long or how fast a run goes but not what an epoch computes, so a run
# may be resumed with other values (thread count can change float rounding, not the maths).
_RESUMABLE_FIELDS = frozenset({"num_threads", "max_train_seconds"})


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_classifier`.

    Attributes:
        epochs_completed: epochs trained in total, across resumes.
        best_epoch: 1-based epoch of the best val AUROC (0 if no epoch ran).
        best_val_auroc: the best val AUROC (NaN when val has a single class).
        history: one record per epoch (``epoch``, ``train_loss``, ``val_loss``,
            ``val_auroc``, ``lr``, ``seconds``).
        stopped_early: patience ran out.
        stopped_by_time: ``max_train_seconds`` ran out.
        resumed_from_epoch: epochs found in the checkpoint at start (0 for a fresh run).
        best_path: weights of the best epoch (a state dict of the whole classifier).
        last_path: the full training checkpoint.
        device: where it trained.
    """

    epochs_completed: int
    best_epoch: int
    best_val_auroc: float
    history: tuple[dict[str, float], ...]
    stopped_early: bool
    stopped_by_time: bool
    resumed_from_epoch: int
    best_path: Path
    last_path: Path
    device: str


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the GPU for ``"auto"`` when one is present, else the CPU; or ``device`` itself."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r} is not valid; use 'auto', 'cpu' or 'cuda'") from exc


@contextlib.contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    before_benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)
        torch.backends.cudnn.benchmark = before_benchmark


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Score stored images with a classifier; the model is left in the mode it was in.

    Args:
        model: a :class:`~cxr_triage.models.networks.Classifier` (any images-to-logits module).
        images: ``uint8`` ``(N, S, S)`` (may be a memory map).
        batch_size: images per forward pass.
        device: where to run; None uses the model's device (the model is moved if needed).

    Returns:
        float32 logits, ``(N,)`` for a single-output model, else ``(N, K)``.
    """
    if images.ndim != 3:
        raise ConfigError(f"images must be (N, S, S) uint8 arrays, got shape {images.shape}")
    target = _model_device(model) if device is None else resolve_device(device)
    model.to(target)
    was_training = model.training
    model.eval()
    parts: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for batch in iter_model_input(images, batch_size):
                parts.append(model(torch.from_numpy(batch).to(target)).float().cpu().numpy())
    finally:
        model.train(was_training)
    n_outputs = int(getattr(model, "n_outputs", parts[0].shape[1] if parts else 1))
    logits = np.concatenate(parts) if parts else np.zeros((0, n_outputs), np.float32)
    return logits[:, 0] if logits.shape[1] == 1 else logits


def predict_scores(
    model: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Sigmoid probabilities of :func:`predict_logits` (same arguments and shape)."""
    logits = predict_logits(model, images, batch_size=batch_size, device=device)
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


def _mean_auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AUROC, averaged over the label columns that have both classes (NaN if none has)."""
    y_true, y_score = y_true.reshape(len(y_true), -1), y_score.reshape(len(y_score), -1)
    values = [
        roc_auc_score(y_true[:, k], y_score[:, k])
        for k in range(y_true.shape[1])
        if 0 < y_true[:, k].sum() < len(y_true)
    ]
    return float(np.mean(values)) if values else math.nan


class _Loss:
    """The training criterion on logits and float targets, both ``(B, K)``."""

    def __init__(self, options: FinetuneOptions, train_targets: np.ndarray) -> None:
        self.options = options
        n_pos = train_targets.sum(axis=0)
        n_neg = len(train_targets) - n_pos
        # A label without positives in train gets weight 1: any other value is a guess.
        ratio = np.where(n_pos > 0, n_neg / np.maximum(n_pos, 1), 1.0)
        self.pos_weight = torch.as_tensor(ratio, dtype=torch.float32)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        kind = self.options.loss
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, targets)
        if kind == "weighted_bce":
            weight = self.pos_weight.to(logits.device)
            return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_true = p * targets + (1 - p) * (1 - targets)
        loss = ce * (1 - p_true) ** self.options.focal_gamma
        if self.options.focal_alpha is not None:
            alpha = self.options.focal_alpha
            loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
        return loss.mean()


def _epoch_seed(seed: int, epoch: int) -> int:
    # Distinct, reproducible streams per epoch; large odd multiplier keeps seeds apart.
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1)


def _atomic_save(obj: object, path: Path) -> None:
    # fsync: a checkpoint must survive the crash it exists for.
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)


def _fingerprint(
    options: FinetuneOptions,
    model: nn.Module,
    train_images: np.ndarray,
    train_targets: np.ndarray,
    val_images: np.ndarray | None,
) -> dict[str, Any]:
    # Non-scalar values (the nested augment options) become strings so the checkpoint stays
    # loadable with weights_only=True.
    fields = {
        k: v if isinstance(v, int | float | str | bool | None) else repr(v)
        for k, v in asdict(options).items()
        if k not in _RESUMABLE_FIELDS
    }
    fields["model"] = (
        f"{type(model).__name__}/{getattr(getattr(model, 'backbone', None), 'arch', '')}"
    )
    fields["n_parameters"] = sum(p.numel() for p in model.parameters())
    fields["n_train"] = len(train_images)
    fields["n_val"] = 0 if val_images is None else len(val_images)
    fields["image_size"] = int(train_images.shape[-1])
    fields["n_positives"] = repr(train_targets.sum(axis=0).tolist())
    return fields


def _check_inputs(
    model: nn.Module, images: np.ndarray, targets: np.ndarray, split: str
) -> np.ndarray:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ConfigError(
            f"{split} images must be uint8 (N, S, S) arrays, got {images.dtype} {images.shape}"
        )
    targets = np.asarray(targets, dtype=np.float32)
    targets = targets[:, None] if targets.ndim == 1 else targets
    if targets.ndim != 2 or len(targets) != len(images):
        raise ConfigError(
            f"{split} targets must be (N,) or (N, K) with N = {len(images)} images, "
            f"got shape {targets.shape}"
        )
    n_outputs = getattr(model, "n_outputs", None)
    if n_outputs is not None and targets.shape[1] != n_outputs:
        raise ConfigError(
            f"{split} targets have {targets.shape[1]} columns but the model has {n_outputs} "
            "outputs; build Classifier(backbone, n_outputs=<number of target columns>)"
        )
    if len(images) == 0:
        raise ConfigError(f"the {split} split is empty")
    return targets


def _set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return
    for parameter in backbone.parameters():
        parameter.requires_grad_(not frozen)
    if frozen:
        # Also freeze BatchNorm statistics, otherwise the "frozen" features still drift.
        backbone.eval()


def _amp_settings(
    options: FinetuneOptions, device: torch.device
) -> tuple[torch.dtype | None, bool]:
    """Return (autocast dtype or None, whether a gradient scaler is needed)."""
    if not options.mixed_precision:
        return None, False
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return torch.float16, True
    # CPU autocast to bfloat16 is only faster with bf16 hardware (AMX/AVX512-BF16); on this
    # project's 2-core machines it measured 10x slower than float32, so the CPU stays float32.
    logger.info("mixed precision applies on a GPU only; training in float32 on the CPU")
    return None, False


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume(
    last_path: Path,
    checkpoint_format: object,
    fingerprint: Mapping[str, Any],
    stateful: Mapping[str, Any],
    device: torch.device,
) -> dict[str, Any] | None:
    """Load ``last_path`` into ``stateful`` (name -> object with ``load_state_dict``) and
    restore the RNG; None when there is no checkpoint.

    Raises:
        ConfigError: the checkpoint is of another run (format or fingerprint differ).
    """
    if not last_path.exists():
        return None
    # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
    saved = torch.load(last_path, map_location="cpu", weights_only=True)
    if saved.get("format") != checkpoint_format or saved.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{last_path.parent} holds a checkpoint of a different run "
            f"({_describe_difference(saved.get('fingerprint', {}), fingerprint)}); "
            "delete that folder to start over, or restore the original options to resume"
        )
    for name, obj in stateful.items():
        obj.load_state_dict(saved[name])
    _restore_rng(saved["rng"], device)
    logger.info("resuming from %s after epoch %d", last_path, saved["epoch"])
    return saved


def _describe_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    keys = sorted(set(saved) | set(current))
    diffs = [
        f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    return "; ".join(diffs[:6])


def train_classifier(
    model: nn.Module,
    train_images: np.ndarray,
    train_targets: np.ndarray,
    val_images: np.ndarray | None,
    val_targets: np.ndarray | None,
    *,
    options: FinetuneOptions,
    checkpoint_dir: Path,
    device: str | torch.device = "auto",
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` with early stopping on val AUROC, checkpointing every epoch.

    When ``checkpoint_dir`` already holds a checkpoint of a run with the same options and data
    shape, training resumes after its last completed epoch (a finished run returns at once).
    On return the model holds the best epoch's weights.

    Args:
        model: a :class:`~cxr_triage.models.networks.Classifier`, moved to ``device``.
        train_images: ``uint8`` ``(N, S, S)`` (may be a memory map).
        train_targets: ``(N,)`` binary labels or ``(N, K)`` multi-label 0/1 targets.
        val_images: ``uint8`` ``(M, S, S)``; None trains exactly ``options.epochs`` epochs
            without validation (no early stopping) and keeps the last epoch's weights, as a
            refit on all development data does.
        val_targets: ``(M,)`` or ``(M, K)``, as the train targets (None with ``val_images``).
        options: the run's settings.
        checkpoint_dir: folder for ``last.pt`` (full state) and ``best.pt`` (best weights).
        device: ``"auto"`` (GPU when available), ``"cpu"``, ``"cuda"`` or a torch device.
        on_epoch_end: called with each epoch's record after its checkpoint is written.

    Returns:
        The run's outcome and history.

    Raises:
        ConfigError: on inconsistent inputs, or when ``checkpoint_dir`` holds a run with other
            options (delete the folder to start over, or restore the options).
    """
    y_train = _check_inputs(model, train_images, train_targets, "train")
    y_val = None if val_images is None else _check_inputs(model, val_images, val_targets, "val")
    target = resolve_device(device)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with _threads(options.num_threads), _deterministic():
        return _train(
            model,
            train_images,
            y_train,
            val_images,
            y_val,
            options,
            checkpoint_dir,
            target,
            on_epoch_end,
        )


@dataclass
class _Fit:
    """What one training run updates: the model and its optimiser, schedule, scaler and loss."""

    model: nn.Module
    criterion: _Loss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    device: torch.device

    @classmethod
    def build(
        cls, model: nn.Module, options: FinetuneOptions, y_train: np.ndarray, device: torch.device
    ) -> _Fit:
        model.to(device)
        criterion = _Loss(options, y_train)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
        amp_dtype, use_scaler = _amp_settings(options, device)
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        return cls(model, criterion, optimizer, scheduler, scaler, amp_dtype, device)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def parts(self) -> dict[str, Any]:
        """The objects a checkpoint saves and restores, by name."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
        }


def _train(
    model: nn.Module,
    train_images: np.ndarray,
    y_train: np.ndarray,
    val_images: np.ndarray | None,
    y_val: np.ndarray | None,
    options: FinetuneOptions,
    checkpoint_dir: Path,
    device: torch.device,
    on_epoch_end: Callable[[dict[str, float]], None] | None,
) -> TrainResult:
    last_path, best_path = checkpoint_dir / LAST_CHECKPOINT, checkpoint_dir / BEST_WEIGHTS
    fit = _Fit.build(model, options, y_train, device)
    fingerprint = _fingerprint(options, model, train_images, y_train, val_images)
    state = _initial_state(last_path, fingerprint, fit)
    resumed_from = state["epoch"]
    started = time.monotonic()
    last_epoch_seconds = 0.0
    stopped_by_time = False
    while not state["finished"] and state["epoch"] < options.epochs:
        if _out_of_time(options, state["epoch"], resumed_from, started, last_epoch_seconds):
            stopped_by_time = True
            break
        epoch = state["epoch"]
        epoch_start = time.monotonic()
        train_loss, lr = _train_epoch(fit, train_images, y_train, options, epoch)
        val_loss, val_auroc, metric = _validate(fit, val_images, y_val, options, epoch)
        _advance(state, fit.model, metric, best_path, options, validated=val_images is not None)
        last_epoch_seconds = time.monotonic() - epoch_start
        record = {
            "epoch": float(epoch + 1),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_auroc": val_auroc,
            "lr": float(lr),
            "seconds": last_epoch_seconds,
        }
        state["history"] = [*state["history"], record]
        _save_checkpoint(fit, state, fingerprint, last_path)
        _log_epoch(record, options.epochs)
        if on_epoch_end is not None:
            on_epoch_end(record)
    if best_path.exists():
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    return _train_result(state, stopped_by_time, resumed_from, best_path, last_path, device)


def _initial_state(last_path: Path, fingerprint: dict[str, Any], fit: _Fit) -> dict[str, Any]:
    """A fresh training state, or the one saved in ``last_path`` (restoring ``fit`` too)."""
    state: dict[str, Any] = {
        "epoch": 0,
        "best_metric": -math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "history": [],
        "finished": False,
        "stopped_early": False,
    }
    saved = _resume(last_path, _CHECKPOINT_FORMAT, fingerprint, fit.parts(), fit.device)
    if saved is not None:
        state = {k: saved[k] for k in state}
    return state


def _out_of_time(
    options: FinetuneOptions,
    epoch: int,
    resumed_from: int,
    started: float,
    last_epoch_seconds: float,
) -> bool:
    """Whether another epoch (as long as the last) would overrun ``max_train_seconds``."""
    elapsed = time.monotonic() - started
    if (
        options.max_train_seconds is not None
        and epoch > resumed_from
        and elapsed + last_epoch_seconds > options.max_train_seconds
    ):
        logger.info(
            "time budget of %.0f s reached after %.0f s", options.max_train_seconds, elapsed
        )
        return True
    return False


def _train_epoch(
    fit: _Fit, train_images: np.ndarray, y_train: np.ndarray, options: FinetuneOptions, epoch: int
) -> tuple[float, float]:
    """One pass over the training images in a seeded order; the mean loss and the epoch's lr."""
    model, optimizer = fit.model, fit.optimizer
    n_train = len(train_images)
    seed = _epoch_seed(options.seed, epoch)
    torch.manual_seed(seed)  # dropout and any other global draws
    generator = torch.Generator().manual_seed(seed)
    frozen = epoch < options.freeze_backbone_epochs
    model.train()
    _set_backbone_frozen(model, frozen)
    order = torch.randperm(n_train, generator=generator).numpy()
    total_loss, n_seen = 0.0, 0
    for start in range(0, n_train, options.batch_size):
        # Sorted indices read a memory map sequentially; order within a batch is irrelevant.
        index = np.sort(order[start : start + options.batch_size])
        if len(index) < 2:
            continue  # BatchNorm cannot train on a batch of one
        pixels = np.asarray(train_images[index])
        if options.augment:
            x = augment_batch(torch.from_numpy(pixels), generator, options.augment_options)
        else:
            x = torch.from_numpy(to_model_input(pixels))
        x = x.to(fit.device, non_blocking=True)
        y = torch.from_numpy(y_train[index]).to(fit.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with fit.autocast():
            logits = model(x)
        loss = fit.criterion(logits, y)
        fit.scaler.scale(loss).backward()
        fit.scaler.step(optimizer)
        fit.scaler.update()
        total_loss += float(loss.detach()) * len(index)
        n_seen += len(index)
    _set_backbone_frozen(model, False)
    lr = optimizer.param_groups[0]["lr"]
    fit.scheduler.step()
    return total_loss / max(n_seen, 1), lr


def _validate(
    fit: _Fit,
    val_images: np.ndarray | None,
    y_val: np.ndarray | None,
    options: FinetuneOptions,
    epoch: int,
) -> tuple[float, float, float]:
    """Validation loss, mean AUROC and the metric that picks the best epoch (higher is better)."""
    if val_images is None or y_val is None:
        # No validation: every epoch is "better", so the last one's weights are kept.
        return math.nan, math.nan, float(epoch + 1)
    val_logits = predict_logits(fit.model, val_images, batch_size=options.eval_batch_size)
    val_logits = val_logits.reshape(len(val_images), -1)
    with torch.no_grad():
        val_loss = float(fit.criterion(torch.from_numpy(val_logits), torch.from_numpy(y_val)))
    val_auroc = _mean_auroc(y_val, val_logits)
    # A single-class val set has no AUROC; then the (negated) val loss decides.
    metric = val_auroc if not math.isnan(val_auroc) else -val_loss
    return val_loss, val_auroc, metric


def _advance(
    state: dict[str, Any],
    model: nn.Module,
    metric: float,
    best_path: Path,
    options: FinetuneOptions,
    *,
    validated: bool,
) -> None:
    """Count the epoch: keep the best weights, apply patience (with validation), finish."""
    state["epoch"] += 1
    if metric > state["best_metric"]:
        state.update(best_metric=metric, best_epoch=state["epoch"], bad_epochs=0)
        _atomic_save(model.state_dict(), best_path)
    else:
        state["bad_epochs"] += 1
    patience = options.patience if validated else None
    if patience is not None and state["bad_epochs"] >= patience:
        state.update(finished=True, stopped_early=True)
    if state["epoch"] >= options.epochs:
        state["finished"] = True


def _save_checkpoint(
    fit: _Fit, state: dict[str, Any], fingerprint: dict[str, Any], path: Path
) -> None:
    """Everything a resumed run needs, written atomically to ``path``."""
    _atomic_save(
        {
            "format": _CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            **{name: part.state_dict() for name, part in fit.parts().items()},
            "rng": _rng_state(fit.device),
            **state,
        },
        path,
    )


def _log_epoch(record: dict[str, float], epochs: int) -> None:
    logger.info(
        "epoch %d/%d: train_loss %.4f val_loss %.4f val_auroc %.4f (%.1f s)",
        int(record["epoch"]),
        epochs,
        record["train_loss"],
        record["val_loss"],
        record["val_auroc"],
        record["seconds"],
    )


def _train_result(
    state: dict[str, Any],
    stopped_by_time: bool,
    resumed_from: int,
    best_path: Path,
    last_path: Path,
    device: torch.device,
) -> TrainResult:
    best_auroc = next(
        (r["val_auroc"] for r in state["history"] if int(r["epoch"]) == state["best_epoch"]),
        math.nan,
    )
    return TrainResult(
        epochs_completed=state["epoch"],
        best_epoch=state["best_epoch"],
        best_val_auroc=best_auroc,
        history=tuple(state["history"]),
        stopped_early=state["stopped_early"],
        stopped_by_time=stopped_by_time,
        resumed_from_epoch=resumed_from,
        best_path=best_path,
        last_path=last_path,
        device=str(device),
    )


@dataclass(frozen=True)
class NetworkCV:
    """Out-of-fold scores of a network trained once per fold.

    Attributes:
        scores: ``(repeats, n_rows)`` sigmoid probabilities, each row scored by the network of
            the fold that held it out.
        fold: ``(repeats, n_rows)`` the fold of each row.
        best_epochs: per fold, the epoch early stopping kept (on the fold's inner holdout).
        results: per fold, the training outcome.
    """

    scores: np.ndarray
    fold: np.ndarray
    best_epochs: tuple[int, ...]
    results: tuple[TrainResult, ...]


def cross_validate_network(
    build_model: Callable[[], nn.Module],
    images: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray,
    folds: list[Fold],
    *,
    options: FinetuneOptions,
    checkpoint_root: Path,
    inner_val_frac: float,
    device: str | torch.device = "auto",
) -> NetworkCV:
    """Train one network per fold (early stopping on a patient holdout of the fold's training
    rows) and score the fold's held-out rows.

    Each fold checkpoints to ``checkpoint_root/r<repeat>-f<fold>``, so an interrupted
    cross-validation resumes inside the fold it stopped in, and finished folds are not redone.

    Args:
        build_model: returns a fresh model (the same initial weights each call: seed inside).
        images: development images ``uint8`` ``(n, S, S)`` (may be a memory map).
        targets: 0/1 labels ``(n,)``.
        groups: patient id per row.
        folds: the comparison's folds (:func:`cxr_triage.data.folds.dev_folds`).
        options: training settings; ``options.seed`` also seeds the inner holdouts.
        checkpoint_root: folder of the per-fold checkpoints.
        inner_val_frac: share of a fold's training patients held out for early stopping.
        device: as for :func:`train_classifier`.

    Returns:
        The out-of-fold scores and each fold's outcome.
    """
    targets = np.asarray(targets)
    repeats = 1 + max(f.repeat for f in folds)
    scores = np.full((repeats, len(targets)), np.nan)
    fold_of = np.full((repeats, len(targets)), -1, dtype=np.int64)
    best_epochs, results = [], []
    for fold in folds:
        fit_rows, stop_rows = inner_holdout(
            targets,
            groups,
            fold.fit,
            fraction=inner_val_frac,
            seed=options.seed + 100 * fold.repeat + fold.fold,
        )
        model = build_model()
        result = train_classifier(
            model,
            np.asarray(images[fit_rows]),
            targets[fit_rows].astype(np.float32),
            np.asarray(images[stop_rows]),
            targets[stop_rows].astype(np.float32),
            options=options,
            checkpoint_dir=Path(checkpoint_root) / f"r{fold.repeat}-f{fold.fold}",
            device=device,
        )
        scores[fold.repeat, fold.score] = predict_scores(
            model, np.asarray(images[fold.score]), batch_size=options.eval_batch_size
        )
        fold_of[fold.repeat, fold.score] = fold.fold
        best_epochs.append(max(1, result.best_epoch))
        results.append(result)
        logger.info(
            "network CV repeat %d fold %d: best epoch %d, inner AUROC %.3f",
            fold.repeat,
            fold.fold,
            result.best_epoch,
            result.best_val_auroc,
        )
    if (fold_of < 0).any():
        raise ConfigError("the folds do not score every row once per repeat")
    return NetworkCV(scores, fold_of, tuple(best_epochs), tuple(results))
