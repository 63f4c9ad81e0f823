"""Fuzzing of the reader: every finding replays as a typed refusal; a short run in the slow suite.

Findings of ``make fuzz`` (libFuzzer ``crash-*`` artifacts) are kept, small, in
``tests/unit/fuzz_regressions/``, named after what they exposed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_triage.errors import InvalidImageError
from cxr_triage.io.images import inspect_image, read_image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REGRESSIONS = sorted((HERE / "fuzz_regressions").glob("*.bin"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_fuzz_finding_is_a_typed_refusal(path: Path) -> None:
    with pytest.raises(InvalidImageError) as info:
        read_image(path.read_bytes())
    assert type(info.value) is not InvalidImageError, info.value.__cause__
    assert inspect_image(path)["reason"] == info.value.reason


@pytest.mark.slow
def test_short_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    seeds, corpus = tmp_path / "seeds", tmp_path / "corpus"
    subprocess.run(
        [sys.executable, "fuzz/build_corpus.py", "--out", str(seeds)],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    corpus.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "fuzz/fuzz_read_image.py",
            str(corpus),
            str(seeds),
            "-runs=2000",
            "-seed=1",
            "-rss_limit_mb=3072",
            "-max_len=65536",
            "-timeout=30",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done 2000 runs" in result.stderr
    assert not list(tmp_path.glob("crash-*"))
