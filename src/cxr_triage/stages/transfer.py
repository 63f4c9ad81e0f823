"""``transfer`` stage: the classifier zoo on frozen embeddings, scored by the comparison's
repeated patient-grouped CV over train+val.

Every configuration (hyperparameter setting) of every candidate is fitted once per fold and
scores the fold's held-out rows; each candidate's best configuration is refitted on all of
train+val and saved. Also scored on the same folds: the metadata-only shortcut baseline, and,
where the data has two or more sites, a leave-one-site-out estimate of each candidate's best
configuration. Test rows are never read.

With ``compare.fold_pretraining_repeats`` (and a backbone pretrained here), the zoo is scored
once more on the first repeats' folds, each fold with a backbone whose finding-label stage never
saw the fold's labels (:func:`cxr_triage.stages.backbone.fold_pretrained_embeddings`): the
compare stage reports the difference as the backbone's label leak.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import Dataset, load_dataset
from cxr_triage.data.folds import dev_folds
from cxr_triage.evaluation.fairness import age_band
from cxr_triage.evaluation.metrics import auroc
from cxr_triage.evaluation.selection import family_representatives
from cxr_triage.stages._entry import run_stage
from cxr_triage.stages.backbone import INIT_FILE, fold_pretrained_embeddings

log = logging.getLogger(__name__)
OOF_FILE = "oof_scores.csv"
CONFIGS_FILE = "configs.json"
LOSO_FILE = "loso.csv"
#: the zoo's out-of-fold scores with one backbone per outer fold (OOF_FILE's layout)
FOLD_PRETRAINED_OOF_FILE = "oof_scores_fold_pretrained.csv"
METADATA_COLUMNS = ("view_position", "sex", "age_band", "site", "manufacturer")


def metadata_frame(data: Dataset, rows: np.ndarray) -> pd.DataFrame:
    """The shortcut baseline's inputs: acquisition and demographic columns as text."""
    manifest = data.manifest.loc[rows]
    frame = pd.DataFrame(index=manifest.index)
    for column in METADATA_COLUMNS:
        if column == "age_band":
            frame[column] = manifest["age"].map(age_band) if "age" in manifest else "unknown"
        else:
            frame[column] = manifest[column].astype(str) if column in manifest else ""
    return frame


def smallest_fit(params: Params, n_rows: int) -> int:
    """Rows of the smallest fit any configuration sees (a nested CV's inner fold)."""
    outer = n_rows * (params.compare.cv_folds - 1) // params.compare.cv_folds
    inner = params.compare.nested_inner_folds
    return max(2, outer * (inner - 1) // inner - 1)


def run(params: Params) -> dict[str, object]:
    """Write ``paths.transfer_dir/{<candidate>.skops, oof_scores.csv, configs.json, loso.csv}``."""
    from cxr_triage.models.transfer import (
        cross_validate_configs,
        cross_validate_fold_features,
        cross_validate_metadata,
        leave_one_site_out,
        refit_config,
        save_candidate,
        zoo_configs,
    )

    p, c = params.transfer, params.compare
    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    embeddings = np.load(Path(params.paths.embed_dir) / "embeddings.npy", mmap_mode="r")
    dev = data.development_rows()
    X, y, groups = np.asarray(embeddings[dev]), data.labels(dev), data.patients(dev)
    folds = dev_folds(y, groups, n_folds=c.cv_folds, repeats=c.cv_repeats, seed=params.seed)
    configs = zoo_configs(p.candidates, X.shape[1], smallest_fit(params, len(y)), params.seed)
    oof = cross_validate_configs(configs, X, y, groups, folds, seed=params.seed, n_jobs=p.n_jobs)
    frame = oof.frame(data.image_ids(dev))
    if c.metadata_baseline:
        meta = cross_validate_metadata(metadata_frame(data, dev), y, folds, seed=params.seed)
        frame[meta.names[0]] = meta.scores[:, :, 0].reshape(-1)
    by_name = {config.name: config for config in configs}
    config_scores = {name: oof.scores[:, :, j] for j, name in enumerate(oof.names)}
    family_of = {config.name: config.candidate for config in configs}
    chosen = family_representatives(config_scores, family_of, y)
    out = Path(params.paths.transfer_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.skops"), out / FOLD_PRETRAINED_OOF_FILE]:
        old.unlink(missing_ok=True)
    summary: dict[str, object] = {}
    sites = data.manifest.loc[dev, "site"].astype(str).to_numpy()
    loso = []
    for candidate, config_name in chosen.items():
        cv_auroc = float(np.mean([auroc(y, s) for s in config_scores[config_name]]))
        fitted = refit_config(
            by_name[config_name], X, y, groups, seed=params.seed, cv_auroc=cv_auroc
        )
        save_candidate(fitted, out / f"{candidate}.skops")
        summary[candidate] = {
            "config": config_name,
            "params": fitted.best_params,
            "cv_auroc": cv_auroc,
        }
        if len(set(sites)) >= 2:
            table = leave_one_site_out(by_name[config_name], X, y, groups, sites, seed=params.seed)
            loso.append(table.assign(candidate=candidate))
    frame.to_csv(out / OOF_FILE, index=False)
    if c.fold_pretraining_repeats and (Path(params.paths.backbone_dir) / INIT_FILE).is_file():
        fold_set = [f for f in folds if f.repeat < c.fold_pretraining_repeats]
        features = fold_pretrained_embeddings(params, data, dev, fold_set)
        fold_pretrained = cross_validate_fold_features(
            configs, features, y, groups, fold_set, seed=params.seed
        )
        fold_pretrained.frame(data.image_ids(dev)).to_csv(
            out / FOLD_PRETRAINED_OOF_FILE, index=False
        )
    elif c.fold_pretraining_repeats:
        log.info(
            "transfer: backbone.weights came from a file, so there is no finding-label "
            "pretraining of this run to repeat per fold; the label-leak check is skipped"
        )
    write_json_atomically(
        out / CONFIGS_FILE,
        {
            "configs": {
                cfg.name: {"candidate": cfg.candidate, "params": cfg.params} for cfg in configs
            },
            "chosen": summary,
            "n_development": int(len(y)),
            "cv_folds": c.cv_folds,
            "cv_repeats": c.cv_repeats,
        },
    )
    columns = ["candidate", "site", "n", "n_abnormal", "auroc"]
    loso_table = (
        pd.concat(loso, ignore_index=True)[columns] if loso else pd.DataFrame(columns=columns)
    )
    loso_table.to_csv(out / LOSO_FILE, index=False)
    log.info(
        "transfer: %d configurations x %d folds; chosen %s",
        len(configs),
        len(folds),
        ", ".join(f"{k} (cv {v['cv_auroc']:.3f})" for k, v in summary.items()),
    )
    return summary


def main() -> None:
    run_stage("transfer", run)


if __name__ == "__main__":
    main()
