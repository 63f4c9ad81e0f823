"""``transfer`` stage: the classifier zoo on frozen embeddings, tuned by patient-grouped CV on
train only; writes each fitted classifier and its scores on val."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import load_dataset
from cxr_triage.stages._entry import run_stage

log = logging.getLogger(__name__)


def run(params: Params) -> dict[str, dict[str, object]]:
    """Write ``paths.transfer_dir/{<candidate>.skops, val_scores.csv, cv.json}``."""
    from cxr_triage.models.transfer import fit_zoo, predict_scores, save_candidate

    p = params.transfer
    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    embeddings = np.load(Path(params.paths.embed_dir) / "embeddings.npy", mmap_mode="r")
    train, val = data.rows("train"), data.rows("val")
    fitted = fit_zoo(
        np.asarray(embeddings[train]),
        data.labels(train),
        data.patients(train),
        names=p.candidates,
        cv_folds=p.cv_folds,
        seed=params.seed,
        n_jobs=p.n_jobs,
        tune_max_rows=p.tune_max_rows,
    )
    out = Path(params.paths.transfer_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = pd.DataFrame({"image_id": data.image_ids(val)})
    summary = {}
    for name, candidate in fitted.items():
        save_candidate(candidate, out / f"{name}.skops")
        scores[name] = predict_scores(candidate, np.asarray(embeddings[val]))
        summary[name] = {
            "cv_auroc": candidate.cv_auroc,
            "best_params": candidate.best_params,
            "fit_seconds": round(candidate.fit_seconds, 2),
        }
    scores.to_csv(out / "val_scores.csv", index=False)
    write_json_atomically(out / "cv.json", summary)
    log.info(
        "transfer: fitted %s",
        ", ".join(f"{k} (cv {v['cv_auroc']:.3f})" for k, v in summary.items()),
    )
    return summary


def main() -> None:
    run_stage("transfer", run)


if __name__ == "__main__":
    main()
