"""Ingestion flow: incoming batch -> validated, de-identified -> ``data/raw`` -> new DVC version.

The batch (``folder`` layout: images + ``labels.csv``) is checked with the ingest readers,
accepted images are added to ``data/raw`` (a ``folder`` source: train on it with
``ingest.source=folder ingest.source_dir=data/raw``), ``dvc add data/raw`` records the data
version, and the batch moves to ``processed/<batch>/`` only after all of that succeeded. Every
refused file is listed with its reason in the artifact and the return value.

    python -m flows.ingestion --incoming data/incoming [--git-commit]
    python -m flows.ingestion --dicomweb http://pacs:8042/dicom-web --dicomweb-labels labels.csv

With ``--dicomweb``, the batch is first fetched from a DICOMweb server (QIDO-RS, WADO-RS) into
the incoming folder: the images of every study in the labels table, which is keyed by
``sop_instance_uid`` or ``study_instance_uid`` (see :mod:`cxr_triage.pacs.dicomweb`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from cxr_triage.config import load_params
from cxr_triage.data.deid import salt_from_env
from cxr_triage.errors import ConfigError
from cxr_triage.io.records import ImageLimits
from cxr_triage.orchestration.rawdata import (
    add_batch_to_raw,
    dvc_add,
    git_commit,
    move_to_processed,
)
from cxr_triage.pacs.dicomweb import fetch_labelled_studies

__all__ = ["ingestion_flow"]


@task(name="add-batch-to-raw", cache_policy=NO_CACHE)
def add_batch(
    incoming_dir: str, raw_dir: str, limits: ImageLimits, synthetic: bool
) -> dict[str, Any]:
    """Validate, de-identify and append the batch to the raw folder."""
    result = add_batch_to_raw(
        incoming_dir, raw_dir, salt=salt_from_env(synthetic=synthetic), limits=limits
    )
    return result.to_dict()


@task(name="fetch-from-dicomweb", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30)
def fetch_from_dicomweb(url: str, labels_csv: str, incoming_dir: str) -> dict[str, Any]:
    """Download the labelled studies' images into the incoming folder (``folder`` layout)."""
    from dataclasses import asdict

    return asdict(fetch_labelled_studies(url, labels_csv, incoming_dir))


# `dvc add` takes DVC's repository lock: another dvc process may hold it for a moment.
@task(name="dvc-add-raw", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=15)
def version_raw(repo_dir: str, raw_dir: str) -> str:
    """Record the raw folder's new content in ``<raw_dir>.dvc``."""
    return dvc_add(repo_dir, raw_dir)


@flow(name="cxr-ingestion", log_prints=True)
def ingestion_flow(
    incoming_dir: str = "data/incoming",
    repo_dir: str = ".",
    raw_dir: str = "data/raw",
    processed_dir: str = "data/processed",
    commit: bool = False,
    synthetic: bool = False,
    dicomweb_url: str | None = None,
    dicomweb_labels: str | None = None,
) -> dict[str, Any]:
    """Add one incoming batch to the DVC-tracked raw data.

    Args:
        incoming_dir: the batch (images + labels.csv), relative to ``repo_dir`` or absolute.
        repo_dir: the Git + DVC repository root.
        raw_dir: the raw data folder, relative to ``repo_dir`` (tracked by ``<raw_dir>.dvc``).
        processed_dir: where finished batches are moved (relative to ``repo_dir``).
        commit: git-commit ``<raw_dir>.dvc`` (and its .gitignore) as the new data version.
        synthetic: the batch is synthetic data (allows the public salt when ``CXR_TRIAGE_SALT``
            is unset); real data always needs the secret salt.
        dicomweb_url: fetch the batch from this DICOMweb server first (into ``incoming_dir``,
            which must then be empty).
        dicomweb_labels: the labels table of the studies to fetch (``sop_instance_uid`` or
            ``study_instance_uid`` keyed; see :mod:`cxr_triage.pacs.dicomweb`).

    Returns:
        The batch result: ``accepted``, ``rejected`` (each with reason and message),
        ``data_version`` (md5 from dvc), ``processed_to``, ``commit``; ``skipped`` when the
        incoming folder is empty.
    """
    logger = get_run_logger()
    repo = Path(repo_dir).resolve()
    incoming = repo / incoming_dir
    if dicomweb_url:
        if not dicomweb_labels:
            raise ConfigError(
                "dicomweb_url needs dicomweb_labels: the labels CSV of the studies to fetch"
            )
        if incoming.is_dir() and any(incoming.iterdir()):
            raise ConfigError(f"{incoming} is not empty: ingest that batch first")
        fetched = fetch_from_dicomweb(dicomweb_url, str(repo / dicomweb_labels), str(incoming))
        logger.info("fetched from %s: %s", dicomweb_url, fetched)
    if not incoming.is_dir() or not any(incoming.iterdir()):
        logger.info("no new data in %s: nothing to ingest", incoming)
        return {"skipped": True, "accepted": [], "rejected": [], "incoming_dir": str(incoming)}
    params = load_params(repo / "params.yaml")
    limits = ImageLimits.from_params(params.ingest)
    result = add_batch(str(incoming), str(repo / raw_dir), limits, synthetic)
    result["skipped"] = False
    if result["accepted"]:
        result["data_version"] = version_raw(str(repo), raw_dir)
        if commit:
            result["commit"] = git_commit(
                repo,
                [f"{raw_dir}.dvc", str(Path(raw_dir).parent / ".gitignore")],
                f"data: add batch {result['batch_id']} ({len(result['accepted'])} images)",
            )
    from cxr_triage.orchestration.rawdata import RawBatchResult

    report = RawBatchResult(**{k: result[k] for k in RawBatchResult.__dataclass_fields__})
    create_markdown_artifact(
        key="cxr-ingestion-report", markdown=report.to_markdown(), description="Ingestion batch"
    )
    if result["rejected"]:
        create_table_artifact(
            key="cxr-ingestion-rejects",
            table=result["rejected"],
            description=f"Files refused in batch {result['batch_id']}",
        )
        logger.warning(
            "%d file(s) refused: %s",
            len(result["rejected"]),
            "; ".join(f"{r['source_path']} ({r['reason']})" for r in result["rejected"][:20]),
        )
    result["processed_to"] = str(
        move_to_processed(incoming, repo / processed_dir, result["batch_id"], report=result)
    )
    logger.info(
        "batch %s: %d accepted, %d rejected, data version %s",
        result["batch_id"],
        len(result["accepted"]),
        len(result["rejected"]),
        result.get("data_version"),
    )
    return result


def main() -> None:  # pragma: no cover - CLI wrapper
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incoming", default="data/incoming")
    parser.add_argument("--repo-dir", default=".")
    parser.add_argument("--raw-dir", default="data/raw")
    parser.add_argument("--git-commit", action="store_true", help="commit data/raw.dvc")
    parser.add_argument("--dicomweb", help="fetch the batch from this DICOMweb base URL first")
    parser.add_argument("--dicomweb-labels", help="labels CSV of the studies to fetch")
    args = parser.parse_args()
    result = ingestion_flow(
        incoming_dir=args.incoming, repo_dir=args.repo_dir, raw_dir=args.raw_dir,
        commit=args.git_commit, dicomweb_url=args.dicomweb, dicomweb_labels=args.dicomweb_labels,
    )  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "accepted"}, indent=2))


if __name__ == "__main__":
    main()
