"""``threshold`` stage: the winner's operating point, chosen by the policy in params on its
recalibrated out-of-fold scores over train+val (every repeat pooled; CIs resample patients)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import load_dataset
from cxr_triage.evaluation.plots import operating_point_table
from cxr_triage.evaluation.threshold import auto_clear_share, select_threshold
from cxr_triage.models.artifacts import read_json
from cxr_triage.stages._entry import run_stage
from cxr_triage.stages.compare import WINNER_OOF_FILE

log = logging.getLogger(__name__)
CV_WHERE = "train+val CV"  # where the operating point's rates come from (plot labels)


def run(params: Params) -> dict[str, object]:
    """Write ``paths.threshold_dir``: threshold.json (threshold and its out-of-fold operating
    point) and plots/operating_point.csv (that point in ROC coordinates, for DVC's ROC plot)."""
    p = params.threshold
    winner = read_json(Path(params.paths.compare_dir) / "winner.json")
    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    oof = pd.read_csv(Path(params.paths.compare_dir) / WINNER_OOF_FILE, dtype={"image_id": str})
    patient_of = data.manifest.set_index("image_id")["patient_id"]
    y_score = oof["y_score"].to_numpy(dtype=np.float64)
    y_true = oof["y_true"].to_numpy(dtype=np.int64)
    groups = oof["image_id"].map(patient_of).to_numpy()
    point = select_threshold(
        y_true,
        y_score,
        p.policy,
        target_sensitivity=p.target_sensitivity,
        target_specificity=p.target_specificity,
        require_ci=p.require_ci,
        groups=groups,
        n_boot=p.n_boot,
        seed=params.seed,
        cost_fn=p.cost_fn,
        cost_fp=p.cost_fp,
    )
    result = {
        "candidate": winner["candidate"],
        **point.to_dict(),
        **{f"cv_{k}": v for k, v in auto_clear_share(y_true, y_score, point.threshold).items()},
    }
    out = Path(params.paths.threshold_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    operating_point_table(
        winner["candidate"], point.threshold, point.sensitivity, point.specificity, CV_WHERE
    ).to_csv(out / "plots" / "operating_point.csv", index=False)
    write_json_atomically(out / "threshold.json", result)
    log.info(
        "threshold: %.4f (%s): out-of-fold sensitivity %.3f, specificity %.3f",
        point.threshold,
        p.policy,
        point.sensitivity,
        point.specificity,
    )
    return result


def main() -> None:
    run_stage("threshold", run)


if __name__ == "__main__":
    main()
