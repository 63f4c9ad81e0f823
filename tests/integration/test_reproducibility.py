"""Golden hashes: the same code, seed and settings give the same weights on another machine.

A tiny training run (small_cnn, 32 px, 2 epochs) runs in a fresh process with the CPU
instruction-set pins of :mod:`cxr_triage.numerics` and a fixed thread count; the sha256 of its
weights is compared with the value recorded here. "Another machine" is emulated by what differs
between machines: the native instruction set (this machine's AVX-512 vs the pinned AVX2
kernels), the thread count, and numpy's CPU features (``NPY_DISABLE_CPU_FEATURES``).

If the golden hash changes after a deliberate change to the training code, re-record it (the
failure message prints the new value) and say why in the commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cxr_triage.numerics import ISA_ENV, PINNED_ISA, pinned_environment

pytestmark = pytest.mark.integration

# sha256[:16] of the tiny run's weights under the AVX2 pins, one thread (torch 2.13.0+cpu).
GOLDEN_WEIGHTS = "23899f0568b22f43"
# Bound between the native and the pinned instruction set (measured 2.5e-4 on predictions).
MAX_SCORE_DIFFERENCE = 1e-3

_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys, tempfile
    from pathlib import Path
    import numpy as np, torch
    from cxr_triage.config import FinetuneOptions
    from cxr_triage.models.finetune import predict_scores, train_classifier
    from cxr_triage.models.networks import Classifier, build_backbone

    def blobs(n, seed, size=32):
        rng = np.random.default_rng(seed)
        y = (np.arange(n) % 2).astype(np.int64)
        yy, xx = np.mgrid[:size, :size]
        x = rng.normal(90, 20, size=(n, size, size))
        for i in np.flatnonzero(y):
            cy, cx = rng.uniform(10, size - 10, size=2)
            x[i] += 110 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 12.5)
        return np.clip(x, 0, 255).astype(np.uint8), y

    x, y = blobs(48, 1)
    vx, vy = blobs(16, 2)
    torch.manual_seed(0)
    model = Classifier(build_backbone("small_cnn"), 1)
    options = FinetuneOptions(epochs=2, batch_size=16, lr=3e-3, patience=None, augment=True,
                              seed=7, num_threads=int(sys.argv[1]))
    with tempfile.TemporaryDirectory() as tmp:
        train_classifier(model, x, y, vx, vy, options=options, checkpoint_dir=Path(tmp),
                         device="cpu")
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        digest.update(key.encode() + state[key].detach().contiguous().numpy().tobytes())
    print(json.dumps({"sha": digest.hexdigest()[:16],
                      "isa": torch.backends.cpu.get_cpu_capability(),
                      "scores": predict_scores(model, vx).tolist()}))
    """
)


def _train(threads: int, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ISA}
    env.pop(ISA_ENV, None)
    return env


@pytest.fixture(scope="module")
def pinned_run() -> dict:
    return _train(1, pinned_environment(_clean_env()))


def test_tiny_training_run_reproduces_the_golden_weights(pinned_run) -> None:
    assert pinned_run["isa"] == "AVX2"
    assert pinned_run["sha"] == GOLDEN_WEIGHTS, (
        f"weights hash {pinned_run['sha']} != golden {GOLDEN_WEIGHTS}: the training code or a "
        "library changed what a seeded run computes; re-record GOLDEN_WEIGHTS if intended"
    )


def test_numpy_cpu_features_do_not_change_the_weights(pinned_run) -> None:
    # numpy only converts uint8 images to float here: exact whatever its SIMD level.
    env = pinned_environment(_clean_env())
    env["NPY_DISABLE_CPU_FEATURES"] = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL"
    assert _train(1, env)["sha"] == pinned_run["sha"]


def test_native_instruction_set_stays_within_the_documented_bound(pinned_run) -> None:
    env = _clean_env()
    env[ISA_ENV] = "native"
    native = _train(1, pinned_environment(env))
    difference = np.max(np.abs(np.array(native["scores"]) - np.array(pinned_run["scores"])))
    assert difference <= MAX_SCORE_DIFFERENCE


def test_pinned_environment_keeps_user_choices_and_can_be_switched_off() -> None:
    env = pinned_environment({"ATEN_CPU_CAPABILITY": "default"})
    assert env["ATEN_CPU_CAPABILITY"] == "default"
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert "MKL_CBWR" not in pinned_environment({ISA_ENV: "native"})
