"""``threshold`` stage: the winner's operating point, chosen on val by the policy in params."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import load_dataset
from cxr_triage.evaluation.calibration import calibrator_from_dict
from cxr_triage.evaluation.threshold import auto_clear_share, select_threshold
from cxr_triage.models.artifacts import read_json
from cxr_triage.stages._entry import run_stage
from cxr_triage.stages.compare import read_val_scores

log = logging.getLogger(__name__)


def run(params: Params) -> dict[str, object]:
    """Write ``paths.threshold_dir/threshold.json`` (threshold and its val operating point)."""
    p = params.threshold
    winner = read_json(Path(params.paths.compare_dir) / "winner.json")
    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    val = data.rows("val")
    scores = read_val_scores(params).set_index("image_id").reindex(data.image_ids(val))
    calibrator = calibrator_from_dict(winner["calibrator"])
    y_score = calibrator.transform(scores[winner["candidate"]].to_numpy(dtype=np.float64))
    y_true = data.labels(val)
    point = select_threshold(
        y_true,
        y_score,
        p.policy,
        target_sensitivity=p.target_sensitivity,
        target_specificity=p.target_specificity,
        require_ci=p.require_ci,
        groups=data.patients(val),
        n_boot=p.n_boot,
        seed=params.seed,
        cost_fn=p.cost_fn,
        cost_fp=p.cost_fp,
    )
    result = {
        "candidate": winner["candidate"],
        **point.to_dict(),
        **{f"val_{k}": v for k, v in auto_clear_share(y_true, y_score, point.threshold).items()},
    }
    write_json_atomically(Path(params.paths.threshold_dir) / "threshold.json", result)
    log.info(
        "threshold: %.4f (%s): val sensitivity %.3f, specificity %.3f",
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
