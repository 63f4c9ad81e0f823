"""The DVC pipeline as the training flow sees it: stage order from DVC, one stage per command.

The order is DVC's own dependency graph (``dvc.repo.Repo(...).index.graph``), topologically
sorted with ties broken by the order of ``dvc.yaml``; no stage list is kept by hand. Each stage
runs as ``dvc repro --single-item <stage>``, so DVC skips an unchanged stage and ``dvc.lock``
stays the record of what ran.

Failures are classified: a killed process, a locked SQLite database or DVC's repository lock can
pass on a second attempt (:attr:`StageFailedError.transient`); a data or code error cannot.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cxr_triage.config import Params, load_params
from cxr_triage.errors import ConfigError, CxrError
from cxr_triage.models.artifacts import read_json

__all__ = [
    "StageFailedError",
    "StageRun",
    "TRANSIENT_MARKERS",
    "is_transient_failure",
    "run_stage",
    "stage_order",
    "training_outputs",
]

log = logging.getLogger(__name__)

# Output fragments of failures that may pass on a retry (and nothing else does).
TRANSIENT_MARKERS = (
    "database is locked",  # SQLite under concurrent writers (Prefect, the prediction log)
    "Unable to acquire lock",  # DVC's repository lock held by another dvc process
    "Resource temporarily unavailable",
    "Connection reset by peer",
)
_KILLED_EXIT_CODES = {137, 143}  # 128 + SIGKILL / SIGTERM, as a shell reports them
# DVC exits 255 whatever the command did, and reports the command's status in its message.
_DVC_KILLED = re.compile(r"failed to reproduce .*exited with (-\d+|137|143)\b")


class StageFailedError(CxrError):
    """A DVC stage exited with an error.

    Args:
        stage: the stage name.
        returncode: the exit status of ``dvc repro``.
        output_tail: the last lines of its output.
        transient: whether a retry may succeed (killed process, lock contention).
    """

    def __init__(self, stage: str, returncode: int, output_tail: str, *, transient: bool) -> None:
        hint = (
            "this looks transient (killed or locked); it is retried"
            if transient
            else f"fix the cause shown above, then re-run (`dvc repro {stage}` reproduces it)"
        )
        super().__init__(
            f"stage {stage!r} failed with exit status {returncode}; {hint}\n{output_tail}"
        )
        self.stage = stage
        self.returncode = returncode
        self.output_tail = output_tail
        self.transient = transient


@dataclass(frozen=True)
class StageRun:
    """What one ``dvc repro --single-item`` did.

    Attributes:
        stage: the stage name.
        ran: DVC ran the command (False: unchanged, skipped).
        seconds: wall time of the ``dvc repro`` call.
    """

    stage: str
    ran: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pipeline_graph(repo_dir: Path) -> tuple[Any, dict[str, Any], list[str]]:
    """DVC's stage graph, stages of the root ``dvc.yaml`` by name, and their file order."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    dvc_yaml = (repo_dir / "dvc.yaml").resolve()
    if not dvc_yaml.is_file():
        raise ConfigError(f"{dvc_yaml} not found; pass the repository root as repo_dir")
    with Repo(str(repo_dir)) as repo:
        graph = repo.index.graph
        stages = {
            s.name: s
            for s in graph.nodes
            if isinstance(s, PipelineStage) and Path(s.path).resolve() == dvc_yaml
        }
    import yaml

    listed = list((yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {}))
    return graph, stages, listed


def stage_order(repo_dir: str | os.PathLike[str], until: str | None = None) -> list[str]:
    """The stages of ``dvc.yaml`` in dependency order, as DVC's graph has them.

    Args:
        repo_dir: the repository root (holds ``dvc.yaml``).
        until: stop at this stage: only it and the stages it depends on are returned.

    Returns:
        Stage names, every stage after the stages it depends on; stages that do not depend on
        each other keep their ``dvc.yaml`` order.

    Raises:
        ConfigError: no ``dvc.yaml`` or an unknown ``until``.
    """
    import networkx as nx

    graph, stages, listed = _pipeline_graph(Path(repo_dir))
    position = {name: i for i, name in enumerate(listed)}
    # DVC's edges point from a stage to the stages it depends on: reverse for "runs before".
    sub = graph.subgraph(stages.values()).reverse(copy=True)
    if until is not None:
        if until not in stages:
            raise ConfigError(
                f"unknown stage {until!r}; the stages of dvc.yaml are: {', '.join(listed)}"
            )
        keep = nx.ancestors(sub, stages[until]) | {stages[until]}
        sub = sub.subgraph(keep)
    order = nx.lexicographical_topological_sort(sub, key=lambda s: position.get(s.name, 1 << 30))
    return [s.name for s in order]


def is_transient_failure(returncode: int, output: str) -> bool:
    """Whether a failed ``dvc repro`` may succeed on a retry.

    Killed processes (negative status, 137, 143, or DVC reporting that the stage's command
    "exited with -9") and lock contention are transient; any other failure (a data error, a
    bug, a bad parameter) fails the same way again.
    """
    if returncode < 0 or returncode in _KILLED_EXIT_CODES or _DVC_KILLED.search(output):
        return True
    return any(marker in output for marker in TRANSIENT_MARKERS)


def run_stage(
    repo_dir: str | os.PathLike[str],
    stage: str,
    *,
    on_line: Callable[[str], Any] | None = None,
    tail_lines: int = 40,
) -> StageRun:
    """Run ``dvc repro --single-item <stage>`` in ``repo_dir``, streaming its output.

    The environment is passed on (``PREFECT_API_URL`` included, so a stage that uses Prefect
    does not start its own temporary server); DVC analytics are off.

    Args:
        repo_dir: the repository root.
        stage: a stage of ``dvc.yaml``.
        on_line: called with each output line (e.g. a Prefect run logger's ``info``).
        tail_lines: lines of output kept for the error message.

    Returns:
        Whether the stage ran or was skipped as unchanged, and the wall time.

    Raises:
        StageFailedError: non-zero exit status (``.transient`` says whether to retry).
    """
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    start = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(
        cmd,
        cwd=repo_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            if on_line is not None and line.strip():
                on_line(line)
        returncode = proc.wait()
    output = "\n".join(lines)
    seconds = time.perf_counter() - start
    if returncode != 0:
        raise StageFailedError(
            stage,
            returncode,
            "\n".join(lines[-tail_lines:]),
            transient=is_transient_failure(returncode, output),
        )
    ran = f"Running stage '{stage}'" in output
    log.info("stage %s %s in %.1f s", stage, "ran" if ran else "was unchanged", seconds)
    return StageRun(stage=stage, ran=ran, seconds=round(seconds, 2))


def training_outputs(repo_dir: str | os.PathLike[str], params: Params | None = None) -> dict:
    """The training results worth publishing, read from the stages' report files.

    Returns:
        ``comparison_table`` (Markdown), ``threshold`` (operating point), ``test_metrics`` and
        ``package`` (model tag); a key is missing when its stage has not run.
    """
    repo_dir = Path(repo_dir)
    params = params or load_params(repo_dir / "params.yaml")
    paths = params.paths
    out: dict[str, Any] = {}
    table = repo_dir / paths.compare_dir / "table.md"
    if table.is_file():
        out["comparison_table"] = table.read_text(encoding="utf-8")
    for key, path in (
        ("threshold", repo_dir / paths.threshold_dir / "threshold.json"),
        ("test_metrics", repo_dir / paths.evaluate_dir / "metrics.json"),
        ("package", repo_dir / paths.package_report_dir / "package.json"),
    ):
        if path.is_file():
            out[key] = read_json(path)
    return out
