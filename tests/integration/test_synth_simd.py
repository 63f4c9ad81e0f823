"""The generator gives the same bytes without numpy's run-time SIMD dispatch (an older CPU).

numpy picks SIMD implementations of exp/log/power/cos at run time (AVX-512, AVX2, baseline);
``NPY_DISABLE_CPU_FEATURES`` lets one machine play an older CPU. This runs a second Python
process, so it lives here rather than with the golden-hash test in ``unit/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.golden_synth import file_hashes

pytestmark = pytest.mark.integration

_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {here!r})
from helpers.golden_synth import file_hashes
print(json.dumps(file_hashes(Path({out!r}))))
"""


def test_generate_dataset_is_identical_without_simd_extensions(tmp_path: Path) -> None:
    # Every run-time dispatched SIMD level off (numpy then runs its baseline code): as on an
    # older CPU. The files must not change.
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # pragma: no cover - numpy moved its private feature list
        pytest.skip("this numpy does not list its dispatched CPU features")
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=" ".join(__cpu_dispatch__))
    script = _SCRIPT.format(here=str(Path(__file__).parents[1]), out=str(tmp_path / "baseline"))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    baseline = json.loads(done.stdout.strip().splitlines()[-1])
    assert file_hashes(tmp_path / "dispatched") == baseline
