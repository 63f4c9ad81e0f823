"""The generator gives the same bytes on every machine: portable math, golden hashes, SIMD levels.

numpy picks SIMD implementations of exp/log/power/cos at run time (AVX-512, AVX2, baseline) and
they differ in the last bits; the generator therefore uses :mod:`cxr_triage.data.synth.portable`.
``NPY_DISABLE_CPU_FEATURES`` lets one machine play an older CPU, which is how the last test
checks that property (integration/test_synth_simd.py: it runs a second Python).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_triage.data.synth import portable
from helpers.golden_synth import GOLDEN_DIGEST, GOLDEN_SETS, digest, file_hashes


def test_generate_dataset_matches_golden_hashes(tmp_path: Path) -> None:
    hashes = file_hashes(tmp_path)
    assert len(hashes) == sum(n + 1 for n, _, _ in GOLDEN_SETS)
    assert digest(hashes) == GOLDEN_DIGEST


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_portable_functions_match_numpy(dtype: type) -> None:
    rng = np.random.default_rng(0)
    angles = rng.uniform(-200, 200, 20_000).astype(dtype)
    logs = rng.uniform(-80, 80, 20_000).astype(dtype)
    unit = rng.uniform(0, 1, 20_000).astype(dtype)
    tol = {np.float32: 2e-7, np.float64: 1e-12}[dtype]
    for ours, reference in ((portable.cos, np.cos), (portable.sin, np.sin)):
        result = ours(angles)
        assert result.dtype == dtype
        np.testing.assert_allclose(result, reference(angles.astype(np.float64)), atol=tol)
    np.testing.assert_allclose(portable.exp(logs), np.exp(logs.astype(np.float64)), rtol=tol)
    positive = unit + dtype(1e-3)
    np.testing.assert_allclose(portable.log(positive), np.log(positive.astype(np.float64)),
                               rtol=tol, atol=tol)  # fmt: skip
    for gamma in (0.85, 1.15, 1.6):
        expected = unit.astype(np.float64) ** gamma
        np.testing.assert_allclose(portable.power(unit, gamma), expected, rtol=tol, atol=tol)


def test_portable_functions_edge_values() -> None:
    assert portable.power(np.array([0.0, 1.0]), 0.5).tolist() == [0.0, 1.0]
    assert portable.log(np.array([0.0]))[0] == -np.inf
    assert np.isnan(portable.log(np.array([-1.0]))[0])
    assert portable.exp(np.array([-1000.0, 0.0]))[1] == 1.0
    assert portable.exp(np.array([-1000.0]))[0] == 0.0
    assert float(portable.cos(0.0)) == 1.0
    assert float(portable.sin(0.0)) == 0.0
