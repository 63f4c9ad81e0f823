"""Training flow: the DVC stages in the order of DVC's graph, one Prefect task per stage.

Each task runs ``dvc repro --single-item <stage>`` (DVC skips unchanged stages; ``dvc.lock`` stays
the record of what ran), streams its output into the Prefect logs and retries only failures that
can pass on a second attempt (killed process, locked database). Then the comparison table,
threshold, test metrics and model tag are published as artifacts.

    python -m flows.training [--repo-dir .] [--until package]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cxr_triage.orchestration.pipeline import (
    StageFailedError,
    run_stage,
    stage_order,
    training_outputs,
)

__all__ = ["repro_stage", "training_flow"]


def _retry_if_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry a stage only when its failure can pass on a second attempt."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return isinstance(exc, StageFailedError) and exc.transient


@task(
    name="dvc-stage",
    task_run_name="{stage}",
    cache_policy=NO_CACHE,  # DVC decides what is up to date (STACK.md §2)
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_if_transient,
)
def repro_stage(repo_dir: str, stage: str) -> dict[str, Any]:
    """Run one DVC stage with its output in the run logs."""
    logger = get_run_logger()
    return run_stage(repo_dir, stage, on_line=logger.info).to_dict()


@task(name="publish-training-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(repo_dir: str) -> dict[str, Any]:
    """Comparison table, operating point, test metrics and model tag as Prefect artifacts."""
    outputs = training_outputs(repo_dir)
    if "comparison_table" in outputs:
        create_markdown_artifact(
            key="cxr-comparison-table",
            markdown=outputs["comparison_table"],
            description="Candidates on validation (reports/compare/table.md)",
        )
    for key, title in (
        ("threshold", "Threshold and operating point (validation)"),
        ("test_metrics", "Test metrics of the winner"),
        ("package", "Model package and tag"),
    ):
        if key in outputs:
            create_markdown_artifact(
                key=f"cxr-{key.replace('_', '-')}",
                markdown=f"## {title}\n\n```json\n{json.dumps(outputs[key], indent=2)}\n```\n",
                description=title,
            )
    return outputs


@flow(name="cxr-training", log_prints=True)
def training_flow(repo_dir: str = ".", until: str | None = None) -> dict[str, Any]:
    """Reproduce the DVC pipeline stage by stage and publish the results.

    Args:
        repo_dir: the repository root (holds dvc.yaml and params.yaml).
        until: stop after this stage (it and the stages it depends on); None runs all.

    Returns:
        ``stages`` (name, ran or skipped, seconds, in run order) and ``outputs`` (see
        :func:`cxr_triage.orchestration.pipeline.training_outputs`).
    """
    repo_dir = str(Path(repo_dir).resolve())
    order = stage_order(repo_dir, until=until)
    get_run_logger().info("DVC stage order: %s", " -> ".join(order))
    runs = [repro_stage(repo_dir, stage) for stage in order]  # sequential: each needs the last
    return {"stages": runs, "outputs": publish_artifacts(repo_dir)}


def main() -> None:  # pragma: no cover - CLI wrapper
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-dir", default=".")
    parser.add_argument("--until", default=None, help="last stage to run (default: all)")
    args = parser.parse_args()
    result = training_flow(repo_dir=args.repo_dir, until=args.until)
    print(json.dumps(result["stages"], indent=2))


if __name__ == "__main__":
    main()
