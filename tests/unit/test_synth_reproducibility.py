"""The generator gives the same bytes on every machine: portable math, golden hashes, SIMD levels.

numpy picks SIMD implementations of exp/log/power/cos at run time (AVX-512, AVX2, baseline) and
they differ in the last bits; the generator therefore uses :mod:`cxr_triage.data.synth.portable`.
``NPY_DISABLE_CPU_FEATURES`` lets one machine play an older CPU, which is how the last test
checks that property here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_triage.data.synth import SynthConfig, generate_dataset, portable

# Every knob spelled out, so that retuning the defaults does not move the golden hashes.
GOLDEN_CONFIG = SynthConfig(
    lesion_contrast=(0.6, 1.3),
    lesion_size=(0.6, 1.3),
    subtle_fraction=0.25,
    subtle_scale=0.3,
    max_findings=3,
    label_noise=0.06,
    anatomy_variation=1.0,
    pose_jitter=1.0,
    ap_abnormal_ratio=2.0,
    max_followups=5,
    prevalence=0.8,
    image_size=96,
)
# (n, site, seed): a DX site with a gamma below 1, a MONOCHROME1 CR site, the drift site.
GOLDEN_SETS = ((8, "hospital_b", 11), (6, "hospital_c", 12), (3, "new_hospital", 13))
# md5 over "<set>/<relative path> <md5 of the file>" lines; recorded with numpy 2.4.6 and
# pydicom 3.0.2 (an AVX-512 machine, and the same with AVX-512 and AVX2 disabled). If the
# generator changes on purpose, run this file's _digest() and record the new value.
GOLDEN_DIGEST = "ec4683f30c7dcbb0d925d34d3919a816"

_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {here!r})
from test_synth_reproducibility import _file_hashes
print(json.dumps(_file_hashes(Path({out!r}))))
"""


def _file_hashes(root: Path) -> dict[str, str]:
    """Generate the golden sets under ``root``; md5 of every file by relative path."""
    hashes = {}
    for n, site, seed in GOLDEN_SETS:
        out = root / f"{site}-{seed}"
        generate_dataset(out, n, site, seed, config=GOLDEN_CONFIG)
        for path in sorted(out.rglob("*")):
            # The lesion boxes (issue 14) came later: the digest still covers exactly the
            # images and labels it covered before them, proving that they changed no byte.
            if path.is_file() and path.name != "lesion_boxes.csv":
                key = f"{site}-{seed}/{path.relative_to(out).as_posix()}"
                hashes[key] = hashlib.md5(path.read_bytes()).hexdigest()
    return hashes


def _digest(hashes: dict[str, str]) -> str:
    lines = "".join(f"{key} {value}\n" for key, value in sorted(hashes.items()))
    return hashlib.md5(lines.encode()).hexdigest()


def test_generate_dataset_matches_golden_hashes(tmp_path: Path) -> None:
    hashes = _file_hashes(tmp_path)
    assert len(hashes) == sum(n + 1 for n, _, _ in GOLDEN_SETS)
    assert _digest(hashes) == GOLDEN_DIGEST


def test_generate_dataset_is_identical_without_simd_extensions(tmp_path: Path) -> None:
    # Every run-time dispatched SIMD level off (numpy then runs its baseline code): as on an
    # older CPU. The files must not change.
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # pragma: no cover - numpy moved its private feature list
        pytest.skip("this numpy does not list its dispatched CPU features")
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=" ".join(__cpu_dispatch__))
    script = _SCRIPT.format(here=str(Path(__file__).parent), out=str(tmp_path / "baseline"))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    baseline = json.loads(done.stdout.strip().splitlines()[-1])
    assert _file_hashes(tmp_path / "dispatched") == baseline


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
