"""``compare`` stage: every candidate on val (AUROC/AUPRC with patient-bootstrap CIs, Brier,
ECE, log loss, reliability), recalibrated without touching test, and the winner by the rule in
``params.yaml``. Writes the table (CSV + Markdown), DVC plot data and PNGs."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import load_dataset
from cxr_triage.errors import DataError
from cxr_triage.evaluation.compare import (
    choose_winner,
    compare_candidates,
    comparison_markdown,
)
from cxr_triage.evaluation.metrics import reliability_curve
from cxr_triage.evaluation.plots import render_calibration_png, render_roc_png, roc_points
from cxr_triage.models.artifacts import FINETUNED
from cxr_triage.stages._entry import data_note, run_stage

log = logging.getLogger(__name__)
TABLE_COLUMNS = [
    "candidate",
    "recalibration",
    "val_auroc",
    "val_auroc_ci_low",
    "val_auroc_ci_high",
    "val_auprc",
    "val_brier",
    "val_ece",
    "val_log_loss",
    "raw_val_ece",
]


def read_val_scores(params: Params) -> pd.DataFrame:
    """All candidates' raw val scores, one column each, joined on ``image_id``."""
    transfer = pd.read_csv(
        Path(params.paths.transfer_dir) / "val_scores.csv", dtype={"image_id": str}
    )
    finetune = pd.read_csv(
        Path(params.paths.finetune_dir) / "val_scores.csv", dtype={"image_id": str}
    )
    if len(finetune.columns) > 1:
        transfer = transfer.merge(finetune, on="image_id", how="inner", validate="one_to_one")
        if len(transfer) != len(finetune):
            raise DataError("transfer and finetune scored different val images; re-run dvc repro")
    return transfer


def run(params: Params) -> dict[str, object]:
    """Write ``paths.compare_dir``: table.csv/.md, winner.json, metrics.json, plots/, PNGs."""
    p = params.compare
    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    val = data.rows("val")
    scores = read_val_scores(params)
    # Rows in the order of data.rows("val"), so labels and patients line up with scores.
    scores = scores.set_index("image_id").reindex(data.image_ids(val))
    if scores.isna().any().any():
        raise DataError("candidate scores are missing for some val images; re-run dvc repro")
    scores = scores.rename_axis("image_id").reset_index()
    y_true, groups = data.labels(val), data.patients(val)
    recalibration = {
        c: (p.recalibrate_finetuned if c == FINETUNED else p.recalibrate_transfer)
        for c in scores.columns
        if c != "image_id"
    }
    result = compare_candidates(
        scores,
        y_true,
        groups,
        recalibration,
        folds=p.calibration_folds,
        n_boot=p.n_boot,
        n_bins=p.n_bins,
        seed=params.seed,
    )
    winner = choose_winner(result.table, p.winner)
    out = Path(params.paths.compare_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    table = result.table.sort_values("val_auroc", ascending=False)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(
        "Validation split (synthetic stand-in data unless stated otherwise). Discrimination on "
        "raw scores; calibration out-of-fold after recalibration (raw_val_ece: before).\n\n"
        + comparison_markdown(table, columns=TABLE_COLUMNS, winner=winner.candidate)
        + "\n"
        + f"\nWinner: **{winner.candidate}**: {winner.reason}\n"
    )
    roc = pd.concat(
        [roc_points(y_true, scores[c]).assign(candidate=c) for c in recalibration],
        ignore_index=True,
    )
    calibration = pd.concat(
        [
            reliability_curve(y_true, result.calibrated[c], n_bins=p.n_bins).assign(candidate=c)
            for c in recalibration
        ],
        ignore_index=True,
    )
    roc[["candidate", "fpr", "tpr"]].to_csv(out / "plots" / "roc.csv", index=False)
    calibration[["candidate", "mean_predicted", "fraction_positive", "count"]].to_csv(
        out / "plots" / "calibration.csv", index=False
    )
    render_roc_png(roc, out / "roc.png", title="ROC on val", subtitle=data_note(params))
    render_calibration_png(
        calibration,
        out / "calibration.png",
        title="Reliability on val (recalibrated, out-of-fold)",
        subtitle=data_note(params),
    )
    best = table.set_index("candidate").loc[winner.candidate]
    write_json_atomically(
        out / "winner.json",
        {
            **winner.to_dict(),
            "recalibration": recalibration[winner.candidate],
            "calibrator": result.calibrators[winner.candidate].to_dict(),
        },
    )
    metrics = {"winner": winner.candidate, **{k: best[k] for k in TABLE_COLUMNS[2:]}}
    write_json_atomically(out / "metrics.json", metrics)
    log.info("compare: %d candidates; winner %s (%s)", len(table), winner.candidate, winner.reason)
    return metrics


def main() -> None:
    run_stage("compare", run)


if __name__ == "__main__":
    main()
