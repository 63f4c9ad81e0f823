"""``package`` stage: the winner as a model package, saved in the BentoML model store.

Writes ``paths.package_dir`` (see :mod:`cxr_triage.inference.package`): the network, classifier,
calibrator, threshold, class names, preprocessing settings, metrics, data and code versions, and
the monitoring reference (features of the val and test images, scored by the package itself).
Then saves it into the BentoML model store and builds the Bento (``package.register`` and
``package.build_bento``), and records the tags in ``paths.package_report_dir/package.json``.

The first package ever saved is marked as serving; later ones serve only once promoted (the
retraining flow's gate, or ``cxr-triage promote``).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cxr_triage.atomic import atomic_dir, write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import Dataset, load_dataset
from cxr_triage.errors import ConfigError
from cxr_triage.inference.layout import MODEL_CARD_FILE, REFERENCE_FILE
from cxr_triage.inference.package import finalise_package, package_from_params
from cxr_triage.models.artifacts import read_json
from cxr_triage.stages._entry import data_note, run_stage

log = logging.getLogger(__name__)
REFERENCE_SPLITS = ("val", "test")


def reference_features(package_dir: Path, data: Dataset) -> Any:
    """Monitoring features of the val and test images, scored through the package."""
    from cxr_triage.inference.predictor import Predictor, PreparedImage

    predictor = Predictor(package_dir)
    rows = np.concatenate([data.rows(s) for s in REFERENCE_SPLITS])
    manifest = data.manifest.loc[rows]
    meta_columns = ("site", "manufacturer", "view_position", "sex", "age", "modality")
    metadata = [
        {
            **{c: row[c] for c in meta_columns if c in row},
            "photometric": row.get("photometric"),
            "orig_rows": row.get("orig_rows"),
            "orig_cols": row.get("orig_cols"),
            "bits_stored": row.get("bits_stored"),
        }
        for row in manifest.to_dict(orient="records")
    ]
    pixels = np.asarray(data.pixels[rows])
    prepared = [PreparedImage(p, m) for p, m in zip(pixels, metadata, strict=True)]
    predictions = predictor.predictions(prepared, predictor.score(pixels))
    import pandas as pd

    frame = pd.DataFrame([p.features for p in predictions])
    frame.insert(0, "split", manifest["split"].to_numpy())
    frame["y_true"] = data.labels(rows)
    return frame


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def _data_versions() -> dict[str, str]:
    """The md5s DVC recorded for the data stages' outputs (dvc.lock), when available."""
    lock = Path("dvc.lock")
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    out: dict[str, str] = {}
    for stage in ("ingest", "split"):
        for item in stages.get(stage, {}).get("outs", []):
            out[f"{stage}:{item['path']}"] = item.get("md5", "")
    return out


def versions(params: Params) -> dict[str, Any]:
    params_text = Path("params.yaml").read_bytes() if Path("params.yaml").is_file() else b""
    return {
        "code": _git_commit(),
        "data": _data_versions(),
        "params_sha256": hashlib.sha256(params_text).hexdigest()[:16],
        "data_note": data_note(params),
    }


def model_card(paths: Any) -> str:
    """The package's model card: ``evaluate``'s card and ``explain``'s section (when that
    stage ran), as the web page shows it."""
    from cxr_triage.stages.explain import SECTION_FILE

    card = (Path(paths.evaluate_dir) / "model_card.md").read_text(encoding="utf-8")
    section = Path(paths.explain_dir) / SECTION_FILE
    if section.is_file():
        card = card.rstrip("\n") + "\n\n" + section.read_text(encoding="utf-8")
    return card


def run(params: Params) -> dict[str, Any]:
    paths = params.paths
    data = load_dataset(paths.ingest_dir, paths.split_dir)
    metrics = {
        **read_json(Path(paths.compare_dir) / "metrics.json"),
        **read_json(Path(paths.evaluate_dir) / "metrics.json"),
    }
    target = Path(paths.package_dir)
    with atomic_dir(target) as tmp:
        package_from_params(
            params, tmp, data, extra={"metrics": metrics, "versions": versions(params)}
        )
        reference = reference_features(tmp, data)
        reference.to_parquet(tmp / REFERENCE_FILE, index=False)
        (tmp / MODEL_CARD_FILE).write_text(model_card(paths), encoding="utf-8")
        tag = finalise_package(tmp)
    record: dict[str, Any] = {
        "model_tag": tag,
        "candidate": read_json(target / "package.json")["candidate"],
        "n_reference": len(reference),
    }
    if params.package.register:
        from cxr_triage.inference.registry import promote, register_package, serving_tag

        register_package(target)
        if serving_tag() is None:
            promote(tag, reason="first packaged model (nothing was serving)")
        record["serving_tag"] = serving_tag()
    if params.package.build_bento:
        if not params.package.register:
            raise ConfigError(
                "package.build_bento needs package.register: the Bento references the model "
                "in the BentoML store; set package.register: true (or build_bento: false)"
            )
        from cxr_triage.serving.bento import build_bento

        record["bento_tag"] = build_bento(tag)
    write_json_atomically(Path(paths.package_report_dir) / "package.json", record)
    log.info("package: %s (%s), %d reference rows", tag, record["candidate"], len(reference))
    return record


def main() -> None:
    run_stage("package", run)


if __name__ == "__main__":
    main()
