"""Small fine-tuning runs for tests: blob images, a seeded small CNN, one-thread options.

Shared by ``unit/test_finetune.py`` and ``integration/test_finetune_sigkill.py`` (whose killed
subprocess must round exactly as the in-process run does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxr_triage.config import FinetuneOptions
from cxr_triage.models.finetune import train_classifier
from cxr_triage.models.networks import Classifier, build_backbone

SIZE = 32
# One thread: the in-process and subprocess runs must round identically.
OPTIONS = FinetuneOptions(
    epochs=3, batch_size=16, lr=3e-3, patience=None, augment=True, seed=7, num_threads=1
)


def blob_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy backgrounds; half of them ("abnormal") carry a bright blob somewhere central."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(labels)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = rng.normal(90, 20, size=(n, SIZE, SIZE))
    for i in np.flatnonzero(labels):
        cy, cx = rng.uniform(10, SIZE - 10, size=2)
        images[i] += 110 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5**2))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def small_classifier(n_outputs: int = 1) -> Classifier:
    """The small CNN with ``n_outputs`` logits, seeded: every call gives the same weights."""
    torch.manual_seed(0)
    return Classifier(build_backbone("small_cnn"), n_outputs)


def train_small(data: dict[str, np.ndarray], directory: Path, options: FinetuneOptions, **kwargs):
    """Train :func:`small_classifier` on ``data`` (``blob_data``'s keys) on the CPU.

    Returns:
        (model, result of ``train_classifier``).
    """
    model = small_classifier()
    result = train_classifier(
        model,
        data["train_x"],
        data["train_y"],
        data["val_x"],
        data["val_y"],
        options=options,
        checkpoint_dir=directory,
        device="cpu",
        **kwargs,
    )
    return model, result


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-for-bit equal state dicts."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
