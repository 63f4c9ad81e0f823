"""``finetune`` stage: backbone + 1-logit head trained end to end, scored by the comparison's
patient-grouped CV over train+val, then refitted on all of train+val.

Per fold: imbalance-aware loss, train-only augmentation, early stopping on a patient holdout of
the fold's training rows, resumable checkpoints. The refit trains for the median of the folds'
best epochs on every development image (no early stopping: nothing is left to stop on). Test
images are never read.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import load_dataset
from cxr_triage.data.folds import dev_folds
from cxr_triage.errors import ConfigError
from cxr_triage.models.artifacts import FINETUNED, load_backbone, save_finetuned
from cxr_triage.stages._entry import run_stage
from cxr_triage.stages._training import checkpoint_dir_for

log = logging.getLogger(__name__)
OOF_FILE = "oof_scores.csv"


def run(params: Params) -> dict[str, object]:
    """Write ``paths.finetune_dir``: model.safetensors, model.json, oof_scores.csv, history.csv."""
    out = Path(params.paths.finetune_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not params.finetune.enabled:
        (out / "model.safetensors").unlink(missing_ok=True)
        pd.DataFrame(columns=["image_id", "repeat", "fold"]).to_csv(out / OOF_FILE, index=False)
        write_json_atomically(out / "model.json", {"enabled": False})
        log.info("finetune: disabled in params.yaml; only the frozen candidates compete")
        return {"enabled": False}
    import torch

    from cxr_triage.models.finetune import cross_validate_network, train_classifier
    from cxr_triage.models.networks import Classifier

    _, info = load_backbone(Path(params.paths.backbone_dir))
    if info["format"] != "torch":
        raise ConfigError(
            "finetune: an ONNX backbone can only be used frozen; set "
            "finetune.enabled: false, or give a PyTorch/safetensors backbone"
        )

    def build_model() -> Classifier:
        backbone, _ = load_backbone(Path(params.paths.backbone_dir))
        torch.manual_seed(params.seed)  # the head's initial weights are part of the run
        return Classifier(backbone.train(), 1)

    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    dev = data.development_rows()
    pixels, y, groups = np.asarray(data.pixels[dev]), data.labels(dev), data.patients(dev)
    options = replace(params.finetune, seed=params.seed)
    folds = dev_folds(
        y,
        groups,
        n_folds=params.compare.cv_folds,
        repeats=params.finetune.cv_repeats,
        seed=params.seed,
    )
    root = Path(params.paths.checkpoint_dir)
    cv = cross_validate_network(
        build_model,
        pixels,
        y,
        groups,
        folds,
        options=options,
        checkpoint_root=checkpoint_dir_for(
            root, "finetune_cv", options, info, params.seed, params.compare.cv_folds, pixels, y
        ),
        inner_val_frac=params.finetune.inner_val_frac,
    )
    refit_epochs = int(np.median(cv.best_epochs))
    refit_options = replace(options, epochs=refit_epochs, patience=None)
    model = build_model()
    result = train_classifier(
        model,
        pixels,
        y.astype(np.float32),
        None,
        None,
        options=refit_options,
        checkpoint_dir=checkpoint_dir_for(
            root, "finetune", refit_options, info, params.seed, pixels, y
        ),
    )
    image_ids = data.image_ids(dev)
    oof = pd.DataFrame(
        {
            "image_id": np.tile(image_ids, cv.scores.shape[0]),
            "repeat": np.repeat(np.arange(cv.scores.shape[0]), len(dev)),
            "fold": cv.fold.reshape(-1),
            FINETUNED: cv.scores.reshape(-1),
        }
    )
    summary = {
        "enabled": True,
        "arch": info["arch"],
        "image_size": params.ingest.image_size,
        "n_development": int(len(dev)),
        "cv_folds": params.compare.cv_folds,
        "cv_repeats": params.finetune.cv_repeats,
        "fold_best_epochs": list(cv.best_epochs),
        "fold_inner_auroc": [r.best_val_auroc for r in cv.results],
        "refit_epochs": refit_epochs,
        "resumed_from_epoch": result.resumed_from_epoch,
        "device": result.device,
        "options": asdict(refit_options),
    }
    save_finetuned(out, model, summary)
    oof.to_csv(out / OOF_FILE, index=False)
    runs = [(f"r{f.repeat}-f{f.fold}", r) for f, r in zip(folds, cv.results, strict=True)]
    # Epoch wall times stay in the log: history.csv is DVC-tracked and must hash the same on
    # every run of the same code and data.
    history = [
        {"run": name, **{k: v for k, v in h.items() if k != "seconds"}}
        for name, r in [*runs, ("refit", result)]
        for h in r.history
    ]
    pd.DataFrame(history).to_csv(out / "history.csv", index=False)
    log.info(
        "finetune: %d folds (best epochs %s), refit on %d images for %d epochs (%s)",
        len(folds),
        list(cv.best_epochs),
        len(dev),
        refit_epochs,
        result.device,
    )
    return summary


def main() -> None:
    run_stage("finetune", run)


if __name__ == "__main__":
    main()
