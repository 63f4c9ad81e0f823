"""Run the whole comparison once per seed as DVC experiments and summarise the spread.

Each seed is ``dvc exp run -n <name>-seed<seed> -S seed=<seed> [-S key=value ...]``, run one
after another (each applies its results to the workspace, where its metrics are read). A seed
whose record already exists in ``reports/seeds/<name>/runs.jsonl`` is skipped, so an
interrupted multi-hour run continues where it stopped when the same command is run again.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import load_params
from cxr_triage.errors import ConfigError, CxrError
from cxr_triage.evaluation.seeds import seeds_markdown, summarise_seeds
from cxr_triage.models.artifacts import read_json

__all__ = ["SeedRunError", "collect_run", "run_seeds", "write_summary"]

log = logging.getLogger(__name__)


class SeedRunError(CxrError):
    """``dvc exp run`` failed for one seed (its output tail is in the message)."""


def collect_run(repo_dir: Path, seed: int, seconds: float) -> dict[str, Any]:
    """The metrics a finished run left in the workspace, as one record."""
    params = load_params(repo_dir / "params.yaml")
    paths = params.paths
    evaluated = read_json(repo_dir / paths.evaluate_dir / "metrics.json")
    compared = read_json(repo_dir / paths.compare_dir / "metrics.json")
    record: dict[str, Any] = {"seed": seed, "winner": compared.get("winner"), "seconds": seconds}
    record.update({k: v for k, v in compared.items() if isinstance(v, int | float)})
    record.update({k: v for k, v in evaluated.items() if isinstance(v, int | float)})
    return record


def write_summary(out_dir: Path, runs: Sequence[dict[str, Any]], note: str) -> dict[str, Any]:
    """``summary.json`` and ``summary.md`` of the runs so far."""
    summary = summarise_seeds(runs)
    write_json_atomically(out_dir / "summary.json", summary)
    (out_dir / "summary.md").write_text(seeds_markdown(summary, runs, note))
    return summary


def run_seeds(
    repo_dir: str | Path,
    seeds: Sequence[int],
    *,
    name: str,
    set_params: Sequence[str] = (),
    dry_run: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the comparison for each seed and write ``reports/seeds/<name>/``.

    Args:
        repo_dir: the DVC repository (a Git work tree with this pipeline committed).
        seeds: the seeds, in order.
        name: experiment prefix and report folder name.
        set_params: extra ``key=value`` overrides for every run (``dvc exp run -S``).
        dry_run: only print the commands.

    Returns:
        The summary (see :func:`cxr_triage.evaluation.seeds.summarise_seeds`).

    Raises:
        SeedRunError: a run failed (earlier seeds' records are kept).
        ConfigError: an override sets ``seed`` itself.
    """
    repo = Path(repo_dir)
    if any(item.split("=", 1)[0].strip() == "seed" for item in set_params):
        raise ConfigError("pass the seeds with --seeds, not -S seed=...")
    out_dir = repo / "reports" / "seeds" / name
    if not dry_run:
        out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / "runs.jsonl"
    runs = (
        [json.loads(line) for line in records_path.read_text().splitlines() if line.strip()]
        if records_path.exists()
        else []
    )
    done = {r["seed"] for r in runs}
    note = ", ".join(set_params) or "params.yaml as committed"
    for seed in seeds:
        if seed in done:
            log.info("seed %d: already recorded, skipped", seed)
            continue
        command = ["dvc", "exp", "run", "-n", f"{name}-seed{seed}", "-S", f"seed={seed}"]
        for item in set_params:
            command += ["-S", item]
        if dry_run:
            print(" ".join(command))  # noqa: T201 - the dry run's output
            continue
        log.info("seed %d: %s", seed, " ".join(command))
        start = time.monotonic()
        result = subprocess.run(command, cwd=repo, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise SeedRunError(f"seed {seed}: `{' '.join(command)}` failed:\n{tail}")
        record = collect_run(repo, seed, round(time.monotonic() - start, 1))
        runs.append(record)
        with records_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        write_summary(out_dir, runs, note)
    return write_summary(out_dir, runs, note) if runs else summarise_seeds(runs)
