"""Running CLIs: ``cxr-triage`` in process (``runner``), dvc and git as subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml
from typer.testing import CliRunner

from helpers.pipeline import REPO

# Invokes the typer app in process: ``runner.invoke(app, [...])``.
runner = CliRunner()
# What a copy of the pipeline needs besides src/ (bentofile.yaml and the lock: deps of `package`).
PIPELINE_FILES = (
    "dvc.yaml",
    ".dvcignore",
    ".gitignore",
    "bentofile.yaml",
    "requirements.lock",
    "models/weights/README.md",
    "models/weights/.gitignore",
)


def run_command(
    cmd: list[str], cwd: Path, timeout: float = 600, *, include_stderr: bool = True
) -> str:
    """Run ``cmd`` in ``cwd`` with telemetry off; fail the test with its output if it fails.

    Returns stdout, followed by stderr unless ``include_stderr`` is false (for JSON output).
    """
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr if include_stderr else proc.stdout


def init_dvc_repo(root: Path) -> Path:
    """``git init`` and ``dvc init`` in ``root`` (nothing committed); returns ``root``."""
    run_command(["git", "init", "-q"], root)
    run_command(["dvc", "init", "-q"], root)
    return root


def init_pipeline_repo(repo: Path, params: dict) -> Path:
    """This repository's pipeline (dvc.yaml, sources) with ``params`` in a new Git + DVC repo."""
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in PIPELINE_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init_dvc_repo(repo)
    run_command(["git", "add", "-A"], repo)
    run_command(["git", "commit", "-qm", "init"], repo)
    return repo
