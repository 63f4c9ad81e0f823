"""``backbone`` stage: the foundation model, loaded from a user's file or pretrained here.

With ``backbone.weights`` set, the file is loaded safely (weights-only torch, safetensors, or an
ONNX embedding model copied as is). Without it, the backbone is pretrained here: first, with
``backbone.ssl.enabled``, self-supervised (SimCLR-style, :mod:`cxr_triage.models.ssl`) on every
image of train and val plus the folders in ``backbone.ssl.extra_dirs``, leaving out every image
of a test patient; then, with ``backbone.finding_labels``, on the train split's 14 finding
labels (multi-label BCE, early stopping on val), so the frozen-feature route works with a
genuinely pretrained encoder. That second step lets the comparison's CV folds see their own
labels through the features; ``compare.fold_pretraining_repeats`` measures the leak, and
``finding_labels: false`` (with SSL) avoids it. Test images are never read here.
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
from cxr_triage.data.folds import Fold
from cxr_triage.errors import ConfigError, DataError
from cxr_triage.models.artifacts import save_backbone, save_state
from cxr_triage.stages._entry import run_stage
from cxr_triage.stages._training import checkpoint_dir_for
from cxr_triage.vocabulary import FINDING_COLUMNS

log = logging.getLogger(__name__)

#: the weights the finding-label stage starts from (after SSL when it ran), written beside
#: ``backbone.safetensors`` whenever the backbone is pretrained here
INIT_FILE = "backbone_init.safetensors"


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
    """Write ``paths.backbone_dir/{backbone.safetensors|backbone.onnx, backbone.json}`` (and
    ``INIT_FILE`` when the finding-label stage runs)."""
    import torch

    from cxr_triage.models.networks import build_backbone

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
        info = {"arch": p.arch}
        if p.ssl.enabled:
            info.update(_pretrain_ssl(backbone, params))
            info["source"] = (
                "pretrained here: self-supervised (SimCLR) on train+val and backbone.ssl."
                "extra_dirs without test patients; no label seen"
            )
        if p.finding_labels:
            # the starting point of the finding-label stage, for its re-runs inside each outer
            # CV fold (fold_pretrained_embeddings): SSL weights, or the seeded initialisation
            save_state(backbone, out / INIT_FILE)
            info.update(_pretrain(backbone, params))
            if p.ssl.enabled:
                info["source"] = (
                    "pretrained here: self-supervised (SimCLR) on train+val and backbone.ssl."
                    "extra_dirs without test patients, then on the train split's 14 findings"
                )
    info.update(embedding_dim=backbone.embedding_dim, image_size=image_size)
    save_backbone(out, backbone, info)
    log.info("backbone: %s (%s), embedding dim %d", p.arch, info["source"], backbone.embedding_dim)
    return info


def _pretrain(backbone, params: Params) -> dict[str, object]:  # noqa: ANN001
    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    train = data.rows("train")
    present = data.findings(train).sum(axis=0) > 0
    log.info(
        "backbone: pretraining %s on %d train images, %d of 14 findings present",
        params.backbone.arch,
        len(train),
        int(present.sum()),
    )
    result = pretrain_on_findings(backbone, params, data, train, data.rows("val"), "backbone")
    return {
        "arch": params.backbone.arch,
        "source": "pretrained here on the train split's 14 findings",
        "pretrain_best_val_mean_auroc": result.best_val_auroc,
        "pretrain_best_epoch": result.best_epoch,
        "pretrain_epochs": result.epochs_completed,
        "device": result.device,
    }


def pretrain_on_findings(
    backbone,  # noqa: ANN001
    params: Params,
    data: Dataset,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    checkpoint_stage: str,
):  # noqa: ANN201
    """Train ``backbone`` in place on the 14 finding labels of ``train_rows`` (multi-label BCE
    with ``backbone.pretrain`` options), early stopping on the mean AUROC over ``val_rows``.

    Args:
        backbone: a :class:`~cxr_triage.models.networks.Backbone`; it ends with the best
            epoch's weights.
        train_rows, val_rows: manifest row indices (``val_rows`` may be empty: then exactly
            ``backbone.pretrain.epochs`` epochs, no early stopping).
        checkpoint_stage: name of its checkpoint folder in ``paths.checkpoint_dir`` (resumed
            when the options and data are the same).

    Returns:
        The :class:`~cxr_triage.models.finetune.TrainResult`.
    """
    from cxr_triage.models.finetune import train_classifier
    from cxr_triage.models.networks import Classifier

    options = replace(params.backbone.pretrain, seed=params.seed)
    targets = data.findings(train_rows)
    train_pixels = np.asarray(data.pixels[train_rows])
    val_pixels = np.asarray(data.pixels[val_rows]) if len(val_rows) else None
    ckpt = checkpoint_dir_for(
        Path(params.paths.checkpoint_dir),
        checkpoint_stage,
        options,
        params.backbone.arch,
        params.seed,
        train_pixels,
        targets,
        *([] if val_pixels is None else [val_pixels]),
    )
    return train_classifier(
        Classifier(backbone, len(FINDING_COLUMNS)),
        train_pixels,
        targets,
        val_pixels,
        data.findings(val_rows) if val_pixels is not None else None,
        options=options,
        checkpoint_dir=ckpt,
    )


def fold_pretrained_embeddings(
    params: Params, data: Dataset, dev_rows: np.ndarray, folds: list[Fold]
) -> list[np.ndarray]:
    """One backbone per outer CV fold, its finding-label stage re-run without the fold's labels.

    The backbone stage learns the train split's finding labels, so a frozen-feature model
    scored on a CV fold of train rows is scored with features that have seen that fold's
    labels: the CV estimate leaks (issue 12; Varma & Simon, BMC Bioinformatics 2006, on
    selection done outside the CV loop). Here, for each fold, the stage is re-run from the
    same starting weights (``INIT_FILE``: the SSL weights, or the seeded initialisation) on the
    fold's fitting rows only (their train rows as targets, their val rows for early stopping,
    as the backbone stage does), and every development row is embedded with the result.
    Self-supervised pretraining sees no label, so it is not repeated.

    Args:
        dev_rows: the development rows (manifest indices) the folds index into.
        folds: outer folds from :func:`cxr_triage.data.folds.dev_folds`.

    Returns:
        Per fold, ``float32`` embeddings ``(len(dev_rows), D)`` (eager torch, so they may
        differ from the ONNX embed stage's in the last float bits).

    Raises:
        DataError: the backbone stage left no ``INIT_FILE`` (weights came from a file).
    """
    import torch
    from safetensors.torch import load_file

    from cxr_triage.models.embed import embed_images
    from cxr_triage.models.networks import build_backbone

    init_path = Path(params.paths.backbone_dir) / INIT_FILE
    if not init_path.is_file():
        raise DataError(
            f"{init_path} is missing: the backbone was not pretrained here (backbone.weights "
            "is set), so there is no finding-label stage to re-run per fold; set "
            "compare.fold_pretraining_repeats: 0, or re-run `dvc repro backbone`"
        )
    init = load_file(str(init_path))
    in_train = data.manifest.loc[dev_rows, "split"].eq("train").to_numpy()
    pixels = np.asarray(data.pixels[dev_rows])
    embeddings = []
    for fold in folds:
        torch.manual_seed(params.seed)  # the finding head's initial weights, as in run()
        backbone = build_backbone(params.backbone.arch)
        backbone.load_state_dict(init)
        fit = fold.fit
        result = pretrain_on_findings(
            backbone,
            params,
            data,
            dev_rows[fit[in_train[fit]]],
            dev_rows[fit[~in_train[fit]]],
            f"backbone_fold-r{fold.repeat}f{fold.fold}",
        )
        log.info(
            "backbone: fold %d.%d re-pretrained without its %d held-out rows (best epoch %d)",
            fold.repeat,
            fold.fold,
            fold.score.size,
            result.best_epoch,
        )
        embeddings.append(
            embed_images(
                backbone,
                pixels,
                batch_size=params.embed.batch_size,
                mode="eager",
                num_threads=params.backbone.pretrain.num_threads,
                progress=False,
            )
        )
    return embeddings


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
    log.info(
        "backbone: SSL took %.1f s over %d epochs",
        sum(h["seconds"] for h in result.history),
        result.epochs_completed,
    )
    # backbone.json is DVC-tracked: what the run computed, never how long it took.
    return {
        "ssl_images": counts,
        "ssl_epochs": result.epochs_completed,
        "ssl_final_loss": result.history[-1]["loss"] if result.history else None,
    }


def main() -> None:
    run_stage("backbone", run)


if __name__ == "__main__":
    main()
