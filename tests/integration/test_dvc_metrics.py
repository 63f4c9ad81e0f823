"""Readable DVC: the headline metrics file, `dvc metrics show` / `diff` and `make exp`."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxr_triage.evaluation.compare import COMPLEXITY
from cxr_triage.evaluation.headline import HEADLINE_KEYS
from cxr_triage.evaluation.selection import ENSEMBLE_PREFIX
from cxr_triage.inference.explain_report import HEADLINE_FIGURES
from cxr_triage.stages.explain import BASELINES_FILE, MAPS_FILE
from helpers.commands import run_command
from helpers.pipeline import REPO

pytestmark = pytest.mark.integration
# The widest winner name: a zoo or fine-tuned candidate, or an ensemble of up to 9 members.
LONGEST_WINNER = max([*COMPLEXITY, f"{ENSEMBLE_PREFIX}9"], key=len)


def _declared(stages: dict, kind: str) -> list[str]:
    """Every path a stage of dvc.yaml declares under ``kind`` (outs, metrics, plots)."""
    paths = []
    for stage in stages.values():
        for entry in stage.get(kind, []):
            paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def test_dvc_yaml_declares_the_headline_and_the_explanation_rows_as_metrics():
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "metrics" not in pipeline  # no top-level metrics either
    assert _declared(pipeline["stages"], "metrics") == [
        "${paths.metrics_file}",
        f"${{paths.explain_dir}}/{MAPS_FILE}",
        f"${{paths.explain_dir}}/{BASELINES_FILE}",
    ]
    assert "metrics" in pipeline["stages"]["evaluate"]  # written by the stage that has them all
    # The detailed files are still outputs (git-tracked, not cached), read by code and tests.
    outs = _declared(pipeline["stages"], "outs")
    for detail in (
        "${paths.split_dir}/counts.json",
        "${paths.compare_dir}/metrics.json",
        "${paths.threshold_dir}/threshold.json",
        "${paths.threshold_dir}/plots",
        "${paths.evaluate_dir}/metrics.json",
        "${paths.package_report_dir}/package.json",
    ):
        assert detail in outs
    roc_plots = {
        name: definition["y"]
        for plot in pipeline["plots"]
        for name, definition in plot.items()
        if name.startswith("roc_")
    }
    assert "${paths.threshold_dir}/plots/operating_point.csv" in roc_plots["roc_validation"]
    assert "${paths.evaluate_dir}/plots/operating_point.csv" in roc_plots["roc_test"]


def test_headline_file_copies_the_detailed_files(tiny_pipeline):
    paths = tiny_pipeline.params.paths
    headline = json.loads(Path(paths.metrics_file).read_text())
    evaluated = json.loads((Path(paths.evaluate_dir) / "metrics.json").read_text())
    operating = json.loads((Path(paths.threshold_dir) / "threshold.json").read_text())
    winner = json.loads((Path(paths.compare_dir) / "winner.json").read_text())
    assert list(headline) == list(HEADLINE_KEYS)
    assert headline == {key: evaluated[detail] for key, detail in HEADLINE_KEYS.items()}
    assert headline["winner"] == winner["candidate"] == operating["candidate"]
    assert 0.0 <= headline["auroc_lo"] <= headline["auroc"] <= headline["auroc_hi"] <= 1.0
    # The operating points drawn on the ROC plots are the threshold's rates.
    test_point = pd.read_csv(Path(paths.evaluate_dir) / "plots" / "operating_point.csv")
    cv_point = pd.read_csv(Path(paths.threshold_dir) / "plots" / "operating_point.csv")
    for point, sens, spec in (
        (test_point, headline["sens"], headline["spec"]),
        (cv_point, operating["sensitivity"], operating["specificity"]),
    ):
        (row,) = point.itertuples()
        assert row.candidate == headline["winner"]
        assert row.threshold == pytest.approx(operating["threshold"])
        assert (row.tpr, row.fpr) == pytest.approx((sens, 1.0 - spec))
    assert "(test)" in test_point["operating_point"].iloc[0]


def _metrics_repo(root: Path, headline: dict, explained: tuple[dict, dict]) -> Path:
    """A Git + DVC repo with this repository's dvc.yaml and params.yaml and the declared
    metrics files: the headline and the explain stage's two rows."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    run_command(["git", "init", "-q"], root)
    run_command(["dvc", "init", "-q"], root)
    paths = yaml.safe_load((root / "params.yaml").read_text())["paths"]
    (root / paths["metrics_file"]).write_text(json.dumps(headline, indent=2))
    explain_dir = root / paths["explain_dir"]
    explain_dir.mkdir(parents=True)
    for name, figures in zip((MAPS_FILE, BASELINES_FILE), explained, strict=True):
        (explain_dir / name).write_text(json.dumps(figures, indent=2))
    return root


def test_dvc_metrics_show_and_diff_fit_a_terminal(tiny_pipeline, tmp_path):
    """The headline row within 100 columns; with the explanation rows (the maps' figures above
    their baselines, same keys) within 170."""
    headline = json.loads(Path(tiny_pipeline.params.paths.metrics_file).read_text())
    # Every explanation figure, at its widest (negative rank correlations, 5 digits).
    explained = (
        {k: -0.123456 for k in HEADLINE_FIGURES},
        {k: -0.654321 for k in HEADLINE_FIGURES},
    )
    repo = _metrics_repo(tmp_path, {**headline, "winner": LONGEST_WINNER}, explained)
    shown = json.loads(run_command(["dvc", "metrics", "show", "--json"], repo, include_stderr=0))
    found = {Path(path).name: entry["data"] for path, entry in shown[""]["data"].items()}
    assert found["metrics.json"] == {**headline, "winner": LONGEST_WINNER}
    assert (found[MAPS_FILE], found[BASELINES_FILE]) == explained
    table = run_command(["dvc", "metrics", "show"], repo, include_stderr=False).splitlines()
    assert len(table) == 4 and all(len(line) <= 170 for line in table), table
    assert table[0].split()[1:] == sorted([*HEADLINE_KEYS, *HEADLINE_FIGURES])
    # in dvc.yaml's order: the maps' row, then their baselines' row below it
    assert [line.split()[0] for line in table[1:]] == [
        "metrics.json",
        f"reports/explain/{MAPS_FILE}",
        f"reports/explain/{BASELINES_FILE}",
    ]
    just_headline = run_command(
        ["dvc", "metrics", "show", "metrics.json"], repo, include_stderr=False
    ).splitlines()
    assert len(just_headline) == 2 and all(len(line) <= 100 for line in just_headline)
    assert just_headline[0].split()[1:] == sorted(HEADLINE_KEYS)
    run_command(["git", "add", "-A"], repo)
    run_command(["git", "commit", "-qm", "headline"], repo)
    changed = {**headline, "winner": LONGEST_WINNER, "auroc": headline["auroc"] / 2}
    (repo / "metrics.json").write_text(json.dumps(changed))
    diff = run_command(["dvc", "metrics", "diff"], repo, include_stderr=False).splitlines()
    assert len(diff) == 2 and diff[1].split()[1] == "auroc", diff
    assert all(len(line) <= 100 for line in diff), diff


TOY_STAGE = """\
import json, yaml
p = yaml.safe_load(open("params.yaml"))
lr = p["finetune"]["lr"]
keys = json.loads(open("keys.json").read())
out = {k: (0.7 + lr if k == "auroc" else 0.0860485119) for k in keys}
out["winner"] = "random_forest" if lr > 0.002 else "logreg"
json.dump(out, open("metrics.json", "w"))
"""


def test_make_exp_shows_headline_and_changed_params_within_200_columns(tmp_path):
    """Two `dvc exp run`s of a stage with the real pipeline's kinds of columns."""
    repo = tmp_path
    run_command(["git", "init", "-q"], repo)
    run_command(["dvc", "init", "-q"], repo)
    (repo / "src").mkdir()
    (repo / "src" / "stage.py").write_text(TOY_STAGE)
    (repo / "keys.json").write_text(json.dumps(list(HEADLINE_KEYS)))
    for name in ("bentofile.yaml", "requirements.lock"):
        (repo / name).write_text("x\n")
    params = {
        "seed": 0,
        "finetune": {"lr": 0.002, "epochs": 12, "batch_size": 32},
        "compare": {"cv_folds": 5, "cv_repeats": 3, "n_bins": 10},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    stage = {
        "cmd": f"{sys.executable} src/stage.py",
        "deps": ["src/stage.py", "keys.json", "bentofile.yaml", "requirements.lock"],
        "params": ["seed", "finetune", "compare"],
        "metrics": [{"metrics.json": {"cache": False}}],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": stage}}))
    run_command(["dvc", "repro", "-q"], repo)
    run_command(["git", "add", "-A"], repo)
    run_command(["git", "commit", "-qm", "baseline"], repo)
    run_command(["dvc", "exp", "run", "-q", "-n", "small-lr", "-S", "finetune.lr=0.001"], repo)
    run_command(
        ["dvc", "exp", "run", "-q", "-n", "big-lr", "-S", "finetune.lr=0.004"]
        + ["-S", "compare.cv_folds=10"],
        repo,
    )
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    shown = run_command(
        ["env", f"PATH={env_path}", "make", "-s", "-f", str(REPO / "Makefile"), "exp"],
        repo,
        include_stderr=False,
    )
    lines = [line for line in shown.splitlines() if line.strip()]  # dvc ends with blank lines
    assert max(len(line) for line in lines) <= 200, shown
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    # every headline metric (changed or not), the two changed params, and nothing else
    assert header[: len(HEADLINE_KEYS) + 1] == ["Experiment", *HEADLINE_KEYS], header
    assert set(header[len(HEADLINE_KEYS) + 1 :]) == {"finetune.lr", "compare.cv_folds"}, header
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in lines[2:]]
    rows = [dict(zip(header, row, strict=True)) for row in cells]
    (big,) = [row for row in rows if "big-lr" in row["Experiment"]]
    assert (big["winner"], big["auroc"], big["finetune.lr"], big["compare.cv_folds"]) == (
        "random_forest",
        "0.704",
        "0.004",
        "10",
    )
    # rounded by DVC, not 0.0860485119 (DVC counts --precision in significant digits)
    assert big["ece"].startswith("0.086") and len(big["ece"]) <= 8
