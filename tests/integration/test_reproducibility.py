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

import numpy as np
import pytest

from cxr_triage.numerics import ISA_ENV, pinned_environment
from helpers.tiny_training import clean_env, train_in_subprocess

pytestmark = pytest.mark.integration

# sha256[:16] of the tiny run's weights under the AVX2 pins, one thread (torch 2.13.0+cpu).
GOLDEN_WEIGHTS = "23899f0568b22f43"
# Bound between the native and the pinned instruction set (measured 2.5e-4 on predictions).
MAX_SCORE_DIFFERENCE = 1e-3


def test_tiny_training_run_reproduces_the_golden_weights(pinned_run) -> None:
    assert pinned_run["isa"] == "AVX2"
    assert pinned_run["sha"] == GOLDEN_WEIGHTS, (
        f"weights hash {pinned_run['sha']} != golden {GOLDEN_WEIGHTS}: the training code or a "
        "library changed what a seeded run computes; re-record GOLDEN_WEIGHTS if intended"
    )


def test_numpy_cpu_features_do_not_change_the_weights(pinned_run) -> None:
    # numpy only converts uint8 images to float here: exact whatever its SIMD level.
    env = pinned_environment(clean_env())
    env["NPY_DISABLE_CPU_FEATURES"] = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL"
    assert train_in_subprocess(1, env)["sha"] == pinned_run["sha"]


def test_native_instruction_set_stays_within_the_documented_bound(pinned_run) -> None:
    env = clean_env()
    env[ISA_ENV] = "native"
    native = train_in_subprocess(1, pinned_environment(env))
    difference = np.max(np.abs(np.array(native["scores"]) - np.array(pinned_run["scores"])))
    assert difference <= MAX_SCORE_DIFFERENCE


def test_pinned_environment_keeps_user_choices_and_can_be_switched_off() -> None:
    env = pinned_environment({"ATEN_CPU_CAPABILITY": "default"})
    assert env["ATEN_CPU_CAPABILITY"] == "default"
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert "MKL_CBWR" not in pinned_environment({ISA_ENV: "native"})
