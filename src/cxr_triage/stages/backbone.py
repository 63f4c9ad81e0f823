"""``backbone`` stage: the foundation model, loaded from a user's file or pretrained here.

With ``backbone.weights`` set, the file is loaded safely (weights-only torch, safetensors, or an
ONNX embedding model copied as is). Without it, the backbone is pretrained on the train split's
14 finding labels (multi-label BCE, early stopping on val), so the frozen-feature route works
with a genuinely pretrained encoder. Test images are never read here.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import load_dataset
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
        info = _pretrain(backbone, Classifier, params)
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


def main() -> None:
    run_stage("backbone", run)


if __name__ == "__main__":
    main()
