"""Training killed with SIGKILL after an epoch resumes from its checkpoint to the same weights.

A second Python process is trained and killed: integration, not unit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_triage.config import AugmentOptions, FinetuneOptions
from helpers.finetune import OPTIONS, assert_same_weights, train_small

pytestmark = pytest.mark.integration


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


def test_train_classifier_resumes_after_sigkill(blob_data: dict, tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", **blob_data)
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
    resumed, result = train_small(
        blob_data, killed_dir, OPTIONS, on_epoch_end=lambda r: epochs_seen.append(r["epoch"])
    )
    assert result.resumed_from_epoch == 2
    assert epochs_seen == [3.0]
    assert [r["epoch"] for r in result.history] == [1.0, 2.0, 3.0]

    uninterrupted, reference = train_small(blob_data, tmp_path / "uninterrupted", OPTIONS)
    assert_same_weights(resumed.state_dict(), uninterrupted.state_dict())
    last_resumed = torch.load(result.last_path, weights_only=True)
    last_reference = torch.load(reference.last_path, weights_only=True)
    assert_same_weights(last_resumed["model"], last_reference["model"])
    assert result.history[-1]["val_loss"] == reference.history[-1]["val_loss"]
