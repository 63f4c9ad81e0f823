"""``finetune`` stage: backbone + 1-logit head trained end to end (imbalance-aware loss,
train-only augmentation, early stopping on val AUROC, resumable checkpoints)."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import load_dataset
from cxr_triage.errors import ConfigError
from cxr_triage.models.artifacts import FINETUNED, load_backbone, save_finetuned
from cxr_triage.stages._entry import run_stage
from cxr_triage.stages._training import checkpoint_dir_for

log = logging.getLogger(__name__)


def run(params: Params) -> dict[str, object]:
    """Write ``paths.finetune_dir/{model.safetensors, model.json, val_scores.csv}``."""
    out = Path(params.paths.finetune_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not params.finetune.enabled:
        (out / "model.safetensors").unlink(missing_ok=True)
        pd.DataFrame(columns=["image_id"]).to_csv(out / "val_scores.csv", index=False)
        write_json_atomically(out / "model.json", {"enabled": False})
        log.info("finetune: disabled in params.yaml; only the frozen candidates compete")
        return {"enabled": False}
    import torch

    from cxr_triage.models.finetune import predict_scores, train_classifier
    from cxr_triage.models.networks import Classifier

    backbone, info = load_backbone(Path(params.paths.backbone_dir))
    if info["format"] != "torch":
        raise ConfigError(
            "finetune: an ONNX backbone can only be used frozen; set "
            "finetune.enabled: false, or give a PyTorch/safetensors backbone"
        )
    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    train, val = data.rows("train"), data.rows("val")
    options = replace(params.finetune, seed=params.seed)
    torch.manual_seed(params.seed)  # the head's initial weights are part of a reproducible run
    model = Classifier(backbone.train(), 1)
    train_pixels, val_pixels = np.asarray(data.pixels[train]), np.asarray(data.pixels[val])
    train_y = data.labels(train).astype(np.float32)
    val_y = data.labels(val).astype(np.float32)
    ckpt = checkpoint_dir_for(
        Path(params.paths.checkpoint_dir),
        "finetune",
        options,
        info,
        params.seed,
        train_pixels,
        train_y,
        val_pixels,
    )
    result = train_classifier(
        model, train_pixels, train_y, val_pixels, val_y, options=options, checkpoint_dir=ckpt
    )
    # train_classifier returns the model holding its best-on-val weights.
    scores = predict_scores(model, val_pixels)
    summary = {
        "enabled": True,
        "arch": info["arch"],
        "image_size": params.ingest.image_size,
        "best_val_auroc": result.best_val_auroc,
        "best_epoch": result.best_epoch,
        "epochs_completed": result.epochs_completed,
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from_epoch,
        "device": result.device,
        "options": asdict(options),
    }
    save_finetuned(out, model, summary)
    pd.DataFrame({"image_id": data.image_ids(val), FINETUNED: scores}).to_csv(
        out / "val_scores.csv", index=False
    )
    pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
    log.info(
        "finetune: best val AUROC %.3f at epoch %d of %d (%s)",
        result.best_val_auroc,
        result.best_epoch,
        result.epochs_completed,
        result.device,
    )
    return summary


def main() -> None:
    run_stage("finetune", run)


if __name__ == "__main__":
    main()
