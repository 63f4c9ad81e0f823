"""A real `dvc repro` of this repository's pipeline in a temporary Git + DVC repo."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from cxr_triage.evaluation.headline import HEADLINE_KEYS
from helpers.commands import run_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # whole pipelines: minutes each


_run = run_command
JSON = {"include_stderr": False}


def test_dvc_repro_runs_every_stage_then_nothing(pipeline_repo):
    # The whole tiny pipeline: about 3 minutes on 2 idle cores, over 10 when they are shared; the
    # timeout only guards against a hang.
    out = _run(["dvc", "repro"], pipeline_repo, timeout=1800)
    stages = (
        "synth",
        "ingest",
        "split",
        "backbone",
        "embed",
        "transfer",
        "finetune",
        "compare",
        "threshold",
        "evaluate",
        "explain",
        "package",
    )
    for stage in stages:
        assert f"Running stage '{stage}'" in out
    manifest = pd.read_csv(pipeline_repo / "data/ingest/manifest.csv")
    splits = pd.read_csv(pipeline_repo / "data/split/split.csv")
    assert len(manifest) == len(splits) == 72
    assert splits.groupby("patient_id")["split"].nunique().max() == 1
    counts = json.loads((pipeline_repo / "data/split/counts.json").read_text())
    assert sum(c["n_images"] for c in counts.values()) == 72
    # The declared metrics: the headline, and the explanations' figures above their baselines;
    # the detail stays in the report files.
    metrics = json.loads(_run(["dvc", "metrics", "show", "--json"], pipeline_repo, **JSON))
    shown = {path: entry["data"] for path, entry in metrics[""]["data"].items()}
    assert list(shown) == [
        "metrics.json",
        "reports/explain/maps.json",
        "reports/explain/baselines.json",
    ]
    assert set(shown["metrics.json"]) == set(HEADLINE_KEYS)
    evaluated = json.loads((pipeline_repo / "reports/evaluate/metrics.json").read_text())
    assert shown["metrics.json"]["auroc"] == evaluated["test_auroc"]
    explained = json.loads((pipeline_repo / "reports/explain/metrics.json").read_text())
    maps, baselines = shown["reports/explain/maps.json"], shown["reports/explain/baselines.json"]
    assert set(maps) == set(baselines) and {"hit", "miou", "del", "ins"} <= set(maps)
    assert (maps["del"], baselines["del"]) == (
        explained["deletion_auc"],
        explained["deletion_auc_random"],
    )

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
    assert "Running stage 'evaluate'" in out  # everything downstream of split re-runs
    assert "Running stage 'package'" in out
    assert "split.val_frac" in _run(["dvc", "params", "diff"], pipeline_repo)


def test_replacing_a_weights_file_reruns_the_backbone_and_a_commit_keeps_the_model_tag(
    pipeline_repo,
):
    """Item 8 of the consolidation: weights are a dependency; the tag is the model's content."""
    _run(["dvc", "repro"], pipeline_repo)
    tag = json.loads((pipeline_repo / "models/package/package.json").read_text())["model_tag"]
    (pipeline_repo / "models/weights/chexnet.pth").write_bytes(b"any bytes: a new file")
    status = _run(["dvc", "status", "backbone"], pipeline_repo)
    assert "models/weights" in status and "changed deps" in status

    (pipeline_repo / "models/weights/chexnet.pth").unlink()
    _run(["git", "commit", "-q", "--allow-empty", "-m", "a commit that changes no code"],
         pipeline_repo)  # fmt: skip
    _run(["dvc", "repro", "--force", "--single-item", "package"], pipeline_repo)
    info = json.loads((pipeline_repo / "models/package/package.json").read_text())
    assert info["versions"]["code"].startswith(
        _run(["git", "rev-parse", "HEAD"], pipeline_repo, include_stderr=False).strip()
    )
    assert info["model_tag"] == tag
