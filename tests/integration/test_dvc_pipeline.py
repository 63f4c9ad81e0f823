"""A real `dvc repro` of this repository's pipeline in a temporary Git + DVC repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> Path:
    """This repo's dvc.yaml, params.yaml and sources, with a tiny synthetic dataset."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"]["sites"] = {"hospital_a": 24, "hospital_b": 16}
    params["ingest"]["image_size"] = 32
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "init"], repo)
    return repo


def test_dvc_repro_runs_every_stage_then_nothing(pipeline_repo):
    out = _run(["dvc", "repro"], pipeline_repo)
    for stage in ("synth", "ingest", "split"):
        assert f"Running stage '{stage}'" in out
    manifest = pd.read_csv(pipeline_repo / "data/ingest/manifest.csv")
    splits = pd.read_csv(pipeline_repo / "data/split/split.csv")
    assert len(manifest) == len(splits) == 40
    assert splits.groupby("patient_id")["split"].nunique().max() == 1
    counts = json.loads((pipeline_repo / "data/split/counts.json").read_text())
    assert sum(c["n_images"] for c in counts.values()) == 40
    assert "split" in _run(["dvc", "metrics", "show"], pipeline_repo)

    again = _run(["dvc", "repro"], pipeline_repo)
    assert "Running stage" not in again
    assert "up to date" in again


def test_dvc_repro_after_param_change_reruns_only_downstream(pipeline_repo):
    _run(["dvc", "repro"], pipeline_repo)
    params_path = pipeline_repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["split"]["val_frac"] = 0.25
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], pipeline_repo)
    assert "Running stage 'split'" in out
    assert "Running stage 'ingest'" not in out and "Running stage 'synth'" not in out
    assert "split.val_frac" in _run(["dvc", "params", "diff"], pipeline_repo)
