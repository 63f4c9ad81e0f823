from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_triage.config import AugmentOptions, FinetuneOptions
from cxr_triage.errors import ConfigError
from cxr_triage.models.augment import augment_batch
from cxr_triage.models.finetune import (
    predict_logits,
    predict_scores,
    train_classifier,
)
from cxr_triage.models.networks import Classifier, build_backbone

SIZE = 32
# One thread: the in-process and subprocess runs must round identically.
OPTIONS = FinetuneOptions(
    epochs=3, batch_size=16, lr=3e-3, patience=None, augment=True, seed=7, num_threads=1
)


def _blob_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    train_x, train_y = _blob_images(64, seed=1)
    val_x, val_y = _blob_images(32, seed=2)
    return {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}


def _model(n_outputs: int = 1) -> Classifier:
    torch.manual_seed(0)
    return Classifier(build_backbone("small_cnn"), n_outputs)


def _train(data: dict[str, np.ndarray], directory: Path, options: FinetuneOptions, **kwargs):
    model = _model()
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


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_train_classifier_learns_blob_signal(data: dict, tmp_path: Path) -> None:
    model, result = _train(data, tmp_path, replace(OPTIONS, epochs=4))
    assert result.best_val_auroc > 0.8
    scores = predict_scores(model, data["val_x"])
    assert scores.shape == (32,) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    assert len(result.history) == 4 and result.resumed_from_epoch == 0
    assert result.best_path.exists() and result.last_path.exists()
    # The model ends with the best epoch's weights.
    _assert_same_weights(model.state_dict(), torch.load(result.best_path, weights_only=True))


def test_train_classifier_stops_early(data: dict, tmp_path: Path) -> None:
    options = replace(OPTIONS, epochs=30, patience=1, lr=1e-2, augment=False)
    _, result = _train(data, tmp_path, options)
    assert result.stopped_early
    assert result.epochs_completed < 30
    assert result.epochs_completed == result.best_epoch + 1


def test_train_classifier_is_deterministic(data: dict, tmp_path: Path) -> None:
    options = replace(OPTIONS, epochs=2)
    first, _ = _train(data, tmp_path / "a", options)
    second, _ = _train(data, tmp_path / "b", options)
    _assert_same_weights(first.state_dict(), second.state_dict())


def _options_json(options: FinetuneOptions) -> str:
    # The default augment ranges are rebuilt in the subprocess; only scalars travel.
    assert options.augment_options == AugmentOptions()
    return json.dumps(
        {f.name: getattr(options, f.name) for f in fields(options) if f.name != "augment_options"}
    )


_KILLED_RUN = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np, torch
    from cxr_triage.config import FinetuneOptions
    from cxr_triage.models.finetune import train_classifier
    from cxr_triage.models.networks import Classifier, build_backbone

    data = np.load(sys.argv[1])
    directory = Path(sys.argv[2])
    options = FinetuneOptions(**json.loads(sys.argv[3]))

    def after_epoch(record):
        if record["epoch"] == 2:
            (directory / "epoch2.marker").touch()
            time.sleep(120)  # killed here, after epoch 2's checkpoint, before epoch 3

    torch.manual_seed(0)
    model = Classifier(build_backbone("small_cnn"), 1)
    train_classifier(model, data["train_x"], data["train_y"], data["val_x"], data["val_y"],
                     options=options, checkpoint_dir=directory, device="cpu",
                     on_epoch_end=after_epoch)
    """
)


def test_train_classifier_resumes_after_sigkill(data: dict, tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", **data)
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_RUN,
            str(tmp_path / "data.npz"),
            str(killed_dir),
            _options_json(OPTIONS),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while not (killed_dir / "epoch2.marker").exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the training subprocess never finished epoch 2"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert torch.load(killed_dir / "last.pt", weights_only=True)["epoch"] == 2

    epochs_seen: list[float] = []
    resumed, result = _train(
        data, killed_dir, OPTIONS, on_epoch_end=lambda r: epochs_seen.append(r["epoch"])
    )
    assert result.resumed_from_epoch == 2
    assert epochs_seen == [3.0]
    assert [r["epoch"] for r in result.history] == [1.0, 2.0, 3.0]

    uninterrupted, reference = _train(data, tmp_path / "uninterrupted", OPTIONS)
    _assert_same_weights(resumed.state_dict(), uninterrupted.state_dict())
    last_resumed = torch.load(result.last_path, weights_only=True)
    last_reference = torch.load(reference.last_path, weights_only=True)
    _assert_same_weights(last_resumed["model"], last_reference["model"])
    assert result.history[-1]["val_loss"] == reference.history[-1]["val_loss"]


def test_train_classifier_finished_run_returns_at_once(data: dict, tmp_path: Path) -> None:
    options = replace(OPTIONS, epochs=1)
    first, _ = _train(data, tmp_path, options)
    again, result = _train(data, tmp_path, replace(options, max_train_seconds=100.0))
    assert result.resumed_from_epoch == 1 and result.epochs_completed == 1
    _assert_same_weights(first.state_dict(), again.state_dict())


def test_train_classifier_refuses_resume_with_other_options(data: dict, tmp_path: Path) -> None:
    _train(data, tmp_path, replace(OPTIONS, epochs=1))
    with pytest.raises(ConfigError, match=r"lr: 0\.003 -> 0\.01.*delete that folder"):
        _train(data, tmp_path, replace(OPTIONS, epochs=1, lr=0.01))


def test_train_classifier_multilabel_with_focal_loss(data: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    extra = rng.integers(0, 2, size=(64, 2))
    train_y = np.column_stack([data["train_y"], extra])
    val_y = np.column_stack([data["val_y"], np.zeros((32, 1)), rng.integers(0, 2, size=(32, 1))])
    torch.manual_seed(0)
    model = Classifier(build_backbone("small_cnn"), 3)
    result = train_classifier(
        model,
        data["train_x"],
        train_y,
        data["val_x"],
        val_y,
        options=replace(OPTIONS, epochs=1, loss="focal", focal_alpha=0.25),
        checkpoint_dir=tmp_path,
        device="cpu",
    )
    # The all-negative val column has no AUROC and is left out of the mean.
    assert np.isfinite(result.best_val_auroc)
    assert predict_logits(model, data["val_x"]).shape == (32, 3)


def test_train_classifier_checks_target_columns(data: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="3 columns but the model has 1"):
        train_classifier(
            _model(),
            data["train_x"],
            np.zeros((64, 3)),
            data["val_x"],
            data["val_y"],
            options=OPTIONS,
            checkpoint_dir=tmp_path,
        )


def test_train_classifier_freezes_backbone_for_warmup(data: dict, tmp_path: Path) -> None:
    before = _model().state_dict()
    model, _ = _train(data, tmp_path, replace(OPTIONS, epochs=1, freeze_backbone_epochs=1))
    after = model.state_dict()
    for key in before:
        if key.startswith("backbone."):
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["head.weight"], after["head.weight"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loss": "hinge"}, "loss"),
        ({"batch_size": 1}, "batch_size"),
        ({"patience": 0}, "patience"),
        ({"focal_alpha": 1.5}, "focal_alpha"),
    ],
)
def test_finetune_options_validate(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FinetuneOptions(**changes)


def test_augment_batch_is_seeded_and_keeps_shape() -> None:
    images = torch.from_numpy(_blob_images(4, seed=5)[0])
    first = augment_batch(images, torch.Generator().manual_seed(1))
    second = augment_batch(images, torch.Generator().manual_seed(1))
    other = augment_batch(images, torch.Generator().manual_seed(2))
    assert first.shape == (4, 1, SIZE, SIZE) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_augment_batch_identity_ranges_reproduce_input() -> None:
    images = torch.from_numpy(_blob_images(3, seed=6)[0])
    still = AugmentOptions(
        max_rotation_deg=0,
        max_translation=0,
        scale_range=(1, 1),
        brightness=0,
        contrast=0,
        gamma_range=(1, 1),
    )
    out = augment_batch(images, torch.Generator().manual_seed(0), still)
    expected = (images[:, None].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_augment_options_do_not_flip_by_default() -> None:
    assert AugmentOptions().hflip_p == 0.0
    with pytest.raises(ConfigError, match="gamma_range"):
        AugmentOptions(gamma_range=(0.0, 1.0))


def test_train_classifier_without_validation_runs_every_epoch_and_keeps_the_last(
    data: dict, tmp_path: Path
) -> None:
    options = replace(OPTIONS, epochs=2, patience=1)  # patience is moot without validation
    model = _model()
    result = train_classifier(
        model,
        data["train_x"],
        data["train_y"],
        None,
        None,
        options=options,
        checkpoint_dir=tmp_path,
        device="cpu",
    )
    assert result.epochs_completed == 2 and result.best_epoch == 2
    assert not result.stopped_early
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    _assert_same_weights(model.state_dict(), saved)


def test_cross_validate_network_scores_each_row_once_and_resumes(
    data: dict, tmp_path: Path
) -> None:
    from cxr_triage.data.folds import dev_folds
    from cxr_triage.models.finetune import cross_validate_network

    images = np.concatenate([data["train_x"], data["val_x"]])
    y = np.concatenate([data["train_y"], data["val_y"]])
    groups = np.arange(len(y)) // 2  # two images per patient
    folds = dev_folds(y, groups, n_folds=3, repeats=1, seed=0)
    options = replace(OPTIONS, epochs=2)
    first = cross_validate_network(
        _model,
        images,
        y,
        groups,
        folds,
        options=options,
        checkpoint_root=tmp_path,
        inner_val_frac=0.2,
        device="cpu",
    )
    assert first.scores.shape == (1, len(y)) and np.isfinite(first.scores).all()
    assert sorted(set(first.fold[0])) == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0-f0", "r0-f1", "r0-f2"]
    # A second call finds every fold finished: nothing retrains, the scores are identical.
    again = cross_validate_network(
        _model,
        images,
        y,
        groups,
        folds,
        options=options,
        checkpoint_root=tmp_path,
        inner_val_frac=0.2,
        device="cpu",
    )
    assert [r.resumed_from_epoch for r in again.results] == [2, 2, 2]
    assert np.array_equal(first.scores, again.scores)
