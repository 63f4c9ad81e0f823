from __future__ import annotations

from dataclasses import replace
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
from helpers.finetune import (
    OPTIONS,
    SIZE,
    assert_same_weights,
    blob_images,
    small_classifier,
    train_small,
)


def test_train_classifier_learns_blob_signal(blob_data: dict, tmp_path: Path) -> None:
    model, result = train_small(blob_data, tmp_path, replace(OPTIONS, epochs=4))
    assert result.best_val_auroc > 0.8
    scores = predict_scores(model, blob_data["val_x"])
    assert scores.shape == (32,) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    assert len(result.history) == 4 and result.resumed_from_epoch == 0
    assert result.best_path.exists() and result.last_path.exists()
    # The model ends with the best epoch's weights.
    assert_same_weights(model.state_dict(), torch.load(result.best_path, weights_only=True))


def test_train_classifier_stops_early(blob_data: dict, tmp_path: Path) -> None:
    options = replace(OPTIONS, epochs=30, patience=1, lr=1e-2, augment=False)
    _, result = train_small(blob_data, tmp_path, options)
    assert result.stopped_early
    assert result.epochs_completed < 30
    assert result.epochs_completed == result.best_epoch + 1


def test_train_classifier_is_deterministic(blob_data: dict, tmp_path: Path) -> None:
    options = replace(OPTIONS, epochs=2)
    first, _ = train_small(blob_data, tmp_path / "a", options)
    second, _ = train_small(blob_data, tmp_path / "b", options)
    assert_same_weights(first.state_dict(), second.state_dict())


def test_train_classifier_finished_run_returns_at_once(blob_data: dict, tmp_path: Path) -> None:
    options = replace(OPTIONS, epochs=1)
    first, _ = train_small(blob_data, tmp_path, options)
    again, result = train_small(blob_data, tmp_path, replace(options, max_train_seconds=100.0))
    assert result.resumed_from_epoch == 1 and result.epochs_completed == 1
    assert_same_weights(first.state_dict(), again.state_dict())


def test_train_classifier_refuses_resume_with_other_options(
    blob_data: dict, tmp_path: Path
) -> None:
    train_small(blob_data, tmp_path, replace(OPTIONS, epochs=1))
    with pytest.raises(ConfigError, match=r"lr: 0\.003 -> 0\.01.*delete that folder"):
        train_small(blob_data, tmp_path, replace(OPTIONS, epochs=1, lr=0.01))


def test_train_classifier_multilabel_with_focal_loss(blob_data: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    extra = rng.integers(0, 2, size=(64, 2))
    train_y = np.column_stack([blob_data["train_y"], extra])
    val_y = np.column_stack(
        [blob_data["val_y"], np.zeros((32, 1)), rng.integers(0, 2, size=(32, 1))]
    )
    torch.manual_seed(0)
    model = Classifier(build_backbone("small_cnn"), 3)
    result = train_classifier(
        model,
        blob_data["train_x"],
        train_y,
        blob_data["val_x"],
        val_y,
        options=replace(OPTIONS, epochs=1, loss="focal", focal_alpha=0.25),
        checkpoint_dir=tmp_path,
        device="cpu",
    )
    # The all-negative val column has no AUROC and is left out of the mean.
    assert np.isfinite(result.best_val_auroc)
    assert predict_logits(model, blob_data["val_x"]).shape == (32, 3)


def test_train_classifier_checks_target_columns(blob_data: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="3 columns but the model has 1"):
        train_classifier(
            small_classifier(),
            blob_data["train_x"],
            np.zeros((64, 3)),
            blob_data["val_x"],
            blob_data["val_y"],
            options=OPTIONS,
            checkpoint_dir=tmp_path,
        )


def test_train_classifier_freezes_backbone_for_warmup(blob_data: dict, tmp_path: Path) -> None:
    before = small_classifier().state_dict()
    model, _ = train_small(
        blob_data, tmp_path, replace(OPTIONS, epochs=1, freeze_backbone_epochs=1)
    )
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
    images = torch.from_numpy(blob_images(4, seed=5)[0])
    first = augment_batch(images, torch.Generator().manual_seed(1))
    second = augment_batch(images, torch.Generator().manual_seed(1))
    other = augment_batch(images, torch.Generator().manual_seed(2))
    assert first.shape == (4, 1, SIZE, SIZE) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_augment_batch_identity_ranges_reproduce_input() -> None:
    images = torch.from_numpy(blob_images(3, seed=6)[0])
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
    blob_data: dict, tmp_path: Path
) -> None:
    options = replace(OPTIONS, epochs=2, patience=1)  # patience is moot without validation
    model = small_classifier()
    result = train_classifier(
        model,
        blob_data["train_x"],
        blob_data["train_y"],
        None,
        None,
        options=options,
        checkpoint_dir=tmp_path,
        device="cpu",
    )
    assert result.epochs_completed == 2 and result.best_epoch == 2
    assert not result.stopped_early
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    assert_same_weights(model.state_dict(), saved)


def test_cross_validate_network_scores_each_row_once_and_resumes(
    blob_data: dict, tmp_path: Path
) -> None:
    from cxr_triage.data.folds import dev_folds
    from cxr_triage.models.finetune import cross_validate_network

    images = np.concatenate([blob_data["train_x"], blob_data["val_x"]])
    y = np.concatenate([blob_data["train_y"], blob_data["val_y"]])
    groups = np.arange(len(y)) // 2  # two images per patient
    folds = dev_folds(y, groups, n_folds=3, repeats=1, seed=0)
    options = replace(OPTIONS, epochs=2)

    def cross_validate():
        return cross_validate_network(
            small_classifier,
            images,
            y,
            groups,
            folds,
            options=options,
            checkpoint_root=tmp_path,
            inner_val_frac=0.2,
            device="cpu",
        )

    first = cross_validate()
    assert first.scores.shape == (1, len(y)) and np.isfinite(first.scores).all()
    assert sorted(set(first.fold[0])) == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0-f0", "r0-f1", "r0-f2"]
    # A second call finds every fold finished: nothing retrains, the scores are identical.
    again = cross_validate()
    assert [r.resumed_from_epoch for r in again.results] == [2, 2, 2]
    assert np.array_equal(first.scores, again.scores)
