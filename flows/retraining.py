"""Retraining flow: ingestion -> training -> promotion gate -> promotion -> notification.

The gate (``cxr_triage.orchestration.gate``) compares the new package with the serving one on the
frozen test set (non-inferiority of AUROC by the patient-bootstrap CI, sensitivity at the new
threshold); the result, promoted or not, is emitted as ``cxr.retraining.finished`` and the
retraining automation posts it to the webhook.

    python -m flows.retraining [--no-ingest]      # one retraining now
    python -m flows.retraining --make-frozen-test-set   # synthetic default: create the frozen set
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from cxr_triage.config import load_params
from cxr_triage.errors import CxrError
from cxr_triage.orchestration.events import retraining_event
from cxr_triage.orchestration.gate import make_synthetic_frozen_set, promote_if_better
from flows.ingestion import ingestion_flow
from flows.training import training_flow

__all__ = ["promotion_flow", "retraining_flow"]


@task(name="promotion-gate", cache_policy=NO_CACHE)
def gate_and_promote(repo_dir: str) -> dict[str, Any]:
    """Score both packages on the frozen set, decide, and promote if the candidate passes."""
    params = load_params(Path(repo_dir) / "params.yaml")
    decision = promote_if_better(params, repo_dir)
    out = decision.to_dict()
    out["one_line"] = decision.one_line()
    return out


def _markdown(decision: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {c['name']} | {c['value']:.4f} | {c['limit']:.4f} | "
        f"{'pass' if c['passed'] else 'FAIL'} |"
        for c in decision.get("checks", [])
    )
    table = f"\n\n| check | value | limit | |\n|---|---|---|---|\n{rows}" if rows else ""
    return (
        f"## Promotion gate: {decision['status']}\n\n{decision['one_line']}{table}\n\n"
        f"```json\n{json.dumps(decision.get('evidence', {}), indent=2, default=str)}\n```\n"
    )


@flow(name="cxr-promotion", log_prints=True)
def promotion_flow(repo_dir: str = ".") -> dict[str, Any]:
    """Gate the package in ``paths.package_dir`` against the serving one and notify the result.

    Returns:
        The decision (``status``, ``promoted``, ``reason``, ``checks``, ``evidence``, tags).
    """
    repo = str(Path(repo_dir).resolve())
    try:
        decision = gate_and_promote(repo)
    except CxrError as exc:
        # Still tell the maintainers why nothing was promoted, then fail the run.
        failed = {"status": "error", "promoted": False, "reason": str(exc)}
        emit_event(**retraining_event(failed, f"ERROR: gate could not decide: {exc}"))
        raise
    create_markdown_artifact(
        key="cxr-promotion-decision", markdown=_markdown(decision), description="Promotion gate"
    )
    emit_event(**retraining_event(decision, decision["one_line"]))
    get_run_logger().info("promotion gate: %s", decision["one_line"])
    return decision


@flow(name="cxr-retraining", log_prints=True)
def retraining_flow(
    repo_dir: str = ".",
    ingest_new_data: bool = True,
    incoming_dir: str = "data/incoming",
    commit: bool = False,
    reason: str = "scheduled",
) -> dict[str, Any]:
    """Ingest new data, reproduce the pipeline, gate and promote, notify.

    Args:
        repo_dir: the Git + DVC repository root.
        ingest_new_data: run the ingestion flow on ``incoming_dir`` first (a no-op if empty).
        incoming_dir: new batch folder (see ``flows.ingestion``).
        commit: git-commit the new ``data/raw.dvc``.
        reason: why this retraining runs (schedule, drift summary...), kept in the logs.

    Returns:
        ``ingestion``, ``training`` (stages run) and ``decision``.
    """
    logger = get_run_logger()
    logger.info("retraining: %s", reason)
    repo = str(Path(repo_dir).resolve())
    ingestion = (
        ingestion_flow(incoming_dir=incoming_dir, repo_dir=repo, commit=commit)
        if ingest_new_data
        else {"skipped": True}
    )
    training = training_flow(repo_dir=repo)
    decision = promotion_flow(repo_dir=repo)
    return {
        "reason": reason,
        "ingestion": {k: v for k, v in ingestion.items() if k != "accepted"},
        "training": training["stages"],
        "decision": decision,
    }


def main() -> None:  # pragma: no cover - CLI wrapper
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-dir", default=".")
    parser.add_argument("--no-ingest", action="store_true")
    parser.add_argument("--git-commit", action="store_true")
    parser.add_argument(
        "--make-frozen-test-set",
        action="store_true",
        help="generate the synthetic frozen test set at promote.frozen_test_dir and exit",
    )
    args = parser.parse_args()
    if args.make_frozen_test_set:
        params = load_params(Path(args.repo_dir) / "params.yaml")
        out = make_synthetic_frozen_set(
            params, Path(args.repo_dir) / params.promote.frozen_test_dir
        )
        print(f"frozen test set written to {out}")
        return
    result = retraining_flow(
        repo_dir=args.repo_dir, ingest_new_data=not args.no_ingest, commit=args.git_commit
    )
    print(json.dumps(result["decision"], indent=2, default=str))


if __name__ == "__main__":
    main()
