"""Running CLIs (dvc, git) from integration tests (pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


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
