"""``backbone`` stage: the foundation model, loaded from a user's file or pretrained here.

With ``backbone.weights`` set, the file is loaded safely (weights-only torch, safetensors, or an
ONNX embedding model copied as is). Without it, the backbone is pretrained here: first, with
``backbone.ssl.enabled``, self-supervised (SimCLR-style, :mod:`cxr_triage.models.ssl`) on every
image of train and val plus the folders in ``backbone.ssl.extra_dirs``, leaving out every image
of a test patient; then on the train split's 14 finding labels (multi-label BCE, early stopping
on val), so the frozen-feature route works with a genuinely pretrained encoder. Test images are
never read here.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import Dataset, load_dataset
from cxr_triage.errors import ConfigError
from cxr_triage.models.artifacts import save_backbone
from cxr_triage.stages._entry import run_stage
from cxr_triage.stages._training import checkpoint_dir_for
from cxr_triage.vocabulary import FINDING_COLUMNS

log = logging.getLogger(__name__)


def weights_file(name: str | None, weights_dir: Path) -> Path | None:
    """The weights file ``backbone.weights`` names, inside ``paths.weights_dir`` (None: pretrain).

    The folder is a dependency of the ``backbone`` stage in ``dvc.yaml``, so replacing a weights
    file (even under the same name) re-runs the stage; a file outside it would go unnoticed.

    Raises:
        ConfigError: the name points outside the folder, or the file does not exist.
    """
    if not name:
        return None
    path = Path(name)
    if not path.is_absolute() and len(path.parts) == 1:
        path = weights_dir / path
    inside = os.path.normpath(path.absolute()).startswith(
        os.path.normpath(weights_dir.absolute()) + os.sep
    )
    if not inside:
        raise ConfigError(
            f"backbone.weights: {name} is outside {weights_dir}/, which DVC tracks as a "
            f"dependency of the backbone stage; copy (or link) it there, e.g. `cp {name} "
            f"{weights_dir}/`, and set backbone.weights to its file name"
        )
    if not path.is_file():
        raise ConfigError(
            f"backbone.weights: {path} not found; put the weights file in {weights_dir}/"
        )
    return path


def run(params: Params) -> dict[str, object]:
    """Write ``paths.backbone_dir/{backbone.safetensors|backbone.onnx, backbone.json}``."""
    import torch

    from cxr_triage.models.networks import Classifier, build_backbone

    p = params.backbone
    out = Path(params.paths.backbone_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink() if old.is_file() else shutil.rmtree(old)
    image_size = params.ingest.image_size
    weights = weights_file(p.weights, Path(params.paths.weights_dir))
    if weights is not None and weights.suffix.lower() == ".onnx":
        shutil.copyfile(weights, out / "backbone.onnx")
        info = {
            "format": "onnx",
            "arch": "onnx",
            "source": weights.name,
            "image_size": image_size,
        }
        write_json_atomically(out / "backbone.json", info)
        return info
    torch.manual_seed(params.seed)  # initial weights are part of a reproducible run
    backbone = build_backbone(p.arch)
    if weights is not None:
        from cxr_triage.models.weights import load_backbone_weights

        report = load_backbone_weights(backbone, weights)
        info = {
            "arch": p.arch,
            "source": weights.name,
            "n_tensors": report.n_tensors,
            "reduced_first_conv": report.reduced_first_conv,
        }
    else:
        info = {}
        if p.ssl.enabled:
            info.update(_pretrain_ssl(backbone, params))
        info.update(_pretrain(backbone, Classifier, params))
        if p.ssl.enabled:
            info["source"] = (
                "pretrained here: self-supervised (SimCLR) on train+val and backbone.ssl."
                "extra_dirs without test patients, then on the train split's 14 findings"
            )
    info.update(embedding_dim=backbone.embedding_dim, image_size=image_size)
    save_backbone(out, backbone, info)
    log.info("backbone: %s (%s), embedding dim %d", p.arch, info["source"], backbone.embedding_dim)
    return info


def _pretrain(backbone, classifier_cls, params: Params) -> dict[str, object]:  # noqa: ANN001
    from cxr_triage.models.finetune import train_classifier

    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    train, val = data.rows("train"), data.rows("val")
    options = replace(params.backbone.pretrain, seed=params.seed)
    targets = data.findings(train)
    present = targets.sum(axis=0) > 0
    log.info(
        "backbone: pretraining %s on %d train images, %d of 14 findings present",
        params.backbone.arch,
        len(train),
        int(present.sum()),
    )
    model = classifier_cls(backbone, len(FINDING_COLUMNS))
    train_pixels, val_pixels = np.asarray(data.pixels[train]), np.asarray(data.pixels[val])
    ckpt = checkpoint_dir_for(
        Path(params.paths.checkpoint_dir),
        "backbone",
        options,
        params.backbone.arch,
        params.seed,
        train_pixels,
        targets,
        val_pixels,
    )
    result = train_classifier(
        model,
        train_pixels,
        targets,
        val_pixels,
        data.findings(val),
        options=options,
        checkpoint_dir=ckpt,
    )
    return {
        "arch": params.backbone.arch,
        "source": "pretrained here on the train split's 14 findings",
        "pretrain_best_val_mean_auroc": result.best_val_auroc,
        "pretrain_best_epoch": result.best_epoch,
        "pretrain_epochs": result.epochs_completed,
        "device": result.device,
    }


def ssl_pool(params: Params, data: Dataset) -> tuple[np.ndarray, dict[str, int]]:
    """Unlabelled images for SSL: train + val, and ``extra_dirs`` minus the test patients.

    Each extra folder needs ``labels.csv`` with ``image`` (a path below the folder, or a file
    name found anywhere below it) and ``patient_id`` (raw, pseudonymised here with the ingest
    salt to compare with the run's test patients).

    Returns:
        ``uint8`` images ``(N, S, S)`` and counts: ``development`` rows, per extra folder the
        images ``used``, ``test_patient`` (left out) and ``unreadable``.
    """
    from cxr_triage.data.deid import Pseudonymiser, salt_from_env
    from cxr_triage.data.preprocess import prepare_image
    from cxr_triage.errors import InvalidImageError
    from cxr_triage.io.images import read_image
    from cxr_triage.io.records import ImageLimits

    size = params.ingest.image_size
    parts = [np.asarray(data.pixels[data.development_rows()])]
    counts: dict[str, int] = {"development": len(parts[0])}
    test_patients = set(data.patients(data.rows("test")))
    salt = salt_from_env(synthetic=params.ingest.source == "synthetic")
    pseudonymiser = Pseudonymiser(salt)
    limits = ImageLimits.from_params(params.ingest)
    for folder in map(Path, params.backbone.ssl.extra_dirs):
        table_path = folder / "labels.csv"
        if not table_path.is_file():
            raise ConfigError(
                f"backbone.ssl.extra_dirs: {table_path} is missing (image, patient_id)"
            )
        table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
        if not {"image", "patient_id"} <= set(table.columns):
            raise ConfigError(f"{table_path} needs the columns image and patient_id")
        by_name = {f.name: f for f in folder.rglob("*") if f.is_file()}
        used, left_out, unreadable, images = 0, 0, 0, []
        for row in table.itertuples():
            if pseudonymiser.patient(str(row.patient_id).strip()) in test_patients:
                left_out += 1
                continue
            path = folder / row.image if (folder / row.image).is_file() else by_name.get(row.image)
            try:
                if path is None:
                    raise FileNotFoundError(row.image)
                images.append(prepare_image(read_image(path, limits).pixels, size))
                used += 1
            except (InvalidImageError, OSError) as exc:
                unreadable += 1
                log.warning("backbone SSL: %s not used (%s)", row.image, exc)
        if images:
            parts.append(np.stack(images))
        counts.update(
            {
                f"{folder.name}:used": used,
                f"{folder.name}:test_patient": left_out,
                f"{folder.name}:unreadable": unreadable,
            }
        )
    return np.concatenate(parts), counts


def _pretrain_ssl(backbone, params: Params) -> dict[str, object]:  # noqa: ANN001
    from cxr_triage.models.ssl import pretrain_contrastive

    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    pool, counts = ssl_pool(params, data)
    options = params.backbone.ssl
    log.info("backbone: SSL on %d images (%s)", len(pool), counts)
    ckpt = checkpoint_dir_for(
        Path(params.paths.checkpoint_dir),
        "backbone_ssl",
        options,
        params.backbone.arch,
        params.seed,
        pool,
    )
    result = pretrain_contrastive(backbone, pool, options, seed=params.seed, checkpoint_dir=ckpt)
    return {
        "ssl_images": counts,
        "ssl_epochs": result.epochs_completed,
        "ssl_final_loss": result.history[-1]["loss"] if result.history else None,
        "ssl_seconds": round(sum(h["seconds"] for h in result.history), 1),
    }


def main() -> None:
    run_stage("backbone", run)


if __name__ == "__main__":
    main()
