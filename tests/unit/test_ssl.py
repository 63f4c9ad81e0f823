"""Self-supervised (SimCLR-style) backbone pretraining: the loss, checkpoint/resume, and the
image pool that never holds a test patient."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr_triage.config import Params, SslParams, parse_section
from cxr_triage.data.dataset import Dataset
from cxr_triage.data.deid import SYNTHETIC_SALT, Pseudonymiser
from cxr_triage.models.networks import build_backbone
from cxr_triage.models.ssl import nt_xent, pretrain_contrastive

OPTIONS = SslParams(enabled=True, epochs=2, batch_size=8, num_threads=1, projection_dim=16)


def _images(n: int = 24, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=(n, size, size), dtype=np.uint8)


def test_nt_xent_is_low_when_views_match_and_near_chance_when_random() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    matched = nt_xent(z, z + 0.01 * torch.randn(16, 8), temperature=0.1)
    unrelated = nt_xent(z, torch.randn(16, 8), temperature=0.1)
    assert matched < 0.1 < unrelated
    assert unrelated > 0.5 * np.log(2 * 16 - 1)


class _Stop(Exception):
    pass


def test_pretrain_contrastive_resumes_exactly_after_an_interruption(tmp_path: Path) -> None:
    images = _images()

    def run(directory: Path, on_epoch_end=None):
        torch.manual_seed(0)
        backbone = build_backbone("small_cnn")
        result = pretrain_contrastive(
            backbone,
            images,
            OPTIONS,
            seed=3,
            checkpoint_dir=directory,
            device="cpu",
            on_epoch_end=on_epoch_end,
        )
        return backbone, result

    straight, result = run(tmp_path / "straight")
    assert result.epochs_completed == 2 and result.resumed_from_epoch == 0
    assert np.isfinite([h["loss"] for h in result.history]).all()

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        run(tmp_path / "interrupted", stop_after_first)
    resumed, result = run(tmp_path / "interrupted")
    assert result.resumed_from_epoch == 1 and result.epochs_completed == 2
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    # A finished run returns at once; other options are refused, not resumed.
    _, again = run(tmp_path / "interrupted")
    assert again.resumed_from_epoch == 2
    from cxr_triage.errors import ConfigError

    with pytest.raises(ConfigError, match="different run"):
        pretrain_contrastive(
            build_backbone("small_cnn"),
            images,
            replace(OPTIONS, lr=0.01),
            seed=3,
            checkpoint_dir=tmp_path / "interrupted",
            device="cpu",
        )


def test_ssl_pool_leaves_out_every_image_of_a_test_patient(tmp_path: Path) -> None:
    from cxr_triage.stages.backbone import ssl_pool
    from helpers.pipeline import tiny_params_data

    pseudonym = Pseudonymiser(SYNTHETIC_SALT).patient
    manifest = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(6)],
            "patient_id": [pseudonym(raw) for raw in ("1", "1", "2", "3", "4", "5")],
            "split": ["train", "train", "val", "test", "test", "train"],
        }
    )
    data = Dataset(manifest=manifest, pixels=_images(6))
    extra = tmp_path / "extra"
    (extra / "images").mkdir(parents=True)
    rows = []
    for k, raw in enumerate(["3", "4", "1", "9", "9"]):  # patients 3 and 4 are test patients
        Image.fromarray(_images(1, size=40, seed=k)[0]).save(extra / "images" / f"e{k}.png")
        rows.append({"image": f"e{k}.png", "patient_id": raw, "label": "normal"})
    rows.append({"image": "missing.png", "patient_id": "9", "label": "normal"})
    pd.DataFrame(rows).to_csv(extra / "labels.csv", index=False)
    data_params = tiny_params_data(tmp_path)
    data_params["backbone"]["ssl"] = {"enabled": True, "extra_dirs": [str(extra)]}
    params = parse_section(Params, data_params, "")
    pool, counts = ssl_pool(params, data)
    assert counts == {
        "development": 4,
        "extra:used": 3,
        "extra:test_patient": 2,
        "extra:unreadable": 1,
    }
    assert pool.shape == (7, 32, 32) and pool.dtype == np.uint8
