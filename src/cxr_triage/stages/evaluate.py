"""``evaluate`` stage: the test split, read once, after model and threshold are fixed.

Discrimination with CIs, sensitivity/specificity/PPV/NPV at the threshold with CIs, calibration,
the share of normal studies that would be auto-cleared, the same per sex, age band, view and
site with the largest gaps named, and a Markdown model card.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import load_dataset
from cxr_triage.evaluation.fairness import largest_gaps, slice_metrics
from cxr_triage.evaluation.headline import headline_metrics
from cxr_triage.evaluation.metrics import (
    auroc,
    binary_metrics_at_threshold,
    bootstrap_ci,
    mean_ci,
    reliability_curve,
    summarise_scores,
)
from cxr_triage.evaluation.model_card import render_model_card
from cxr_triage.evaluation.plots import operating_point_table, render_roc_png, roc_points
from cxr_triage.evaluation.threshold import auto_clear_share
from cxr_triage.inference.explain_report import retrieval
from cxr_triage.inference.package import package_from_params
from cxr_triage.inference.predictor import Predictor
from cxr_triage.inference.qc_report import (
    QcSet,
    gate_metadata,
    gate_table,
    qc_summary,
    rows_markdown,
)
from cxr_triage.models.artifacts import read_json
from cxr_triage.stages._entry import data_note, run_stage
from cxr_triage.stages.threshold import CV_WHERE

log = logging.getLogger(__name__)
AT_THRESHOLD = ("sensitivity", "specificity", "ppv", "npv")


def _at_threshold(y_true: np.ndarray, y_score: np.ndarray, *, threshold: float, key: str) -> float:
    return binary_metrics_at_threshold(y_true, y_score, threshold)[key]


def _share_ci(values: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> tuple:
    ci = mean_ci(values, groups, n_boot=n_boot, seed=seed)
    return ci.low, ci.high


def _qc_passed_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    groups: np.ndarray,
    passed: np.ndarray,
    threshold: float,
    params: Params,
) -> dict[str, object]:
    """AUROC (with CI), sensitivity and specificity on the test images the gate passes, and
    how many it passes: the figures on what the service would actually score."""
    out: dict[str, object] = {
        "test_qc_n_passed": int(passed.sum()),
        "test_qc_passed_share": float(passed.mean()) if len(passed) else float("nan"),
    }
    if passed.sum() == 0 or len(np.unique(y_true[passed])) < 2:
        return out
    ci = bootstrap_ci(
        auroc,
        y_true[passed],
        y_score[passed],
        groups[passed],
        n_boot=params.evaluate.n_boot,
        seed=params.seed,
    )
    at = binary_metrics_at_threshold(y_true[passed], y_score[passed], threshold)
    out.update(
        test_qc_passed_auroc=ci.estimate,
        test_qc_passed_auroc_ci_low=ci.low,
        test_qc_passed_auroc_ci_high=ci.high,
        test_qc_passed_sensitivity=at["sensitivity"],
        test_qc_passed_specificity=at["specificity"],
    )
    return out


def run(params: Params) -> dict[str, object]:
    """Write ``paths.evaluate_dir`` (metrics.json, slices.csv, gaps.csv, model_card.md, plots)
    and the headline metrics ``paths.metrics_file``."""
    p, paths = params.evaluate, params.paths
    winner = read_json(Path(paths.compare_dir) / "winner.json")
    operating = read_json(Path(paths.threshold_dir) / "threshold.json")
    threshold = float(operating["threshold"])
    data = load_dataset(paths.ingest_dir, paths.split_dir)
    test = data.rows("test")
    # Scored through a model package, exactly as the service and batch scoring will score.
    y_true, groups = data.labels(test), data.patients(test)
    with tempfile.TemporaryDirectory(prefix="cxr-evaluate-") as tmp:
        package_from_params(params, Path(tmp), data)
        predictor = Predictor(tmp)
        pixels = np.asarray(data.pixels[test])
        scores = predictor.score(pixels)
        y_score = scores.prob_abnormal
        similar_cases = predictor.similar_cases
        # The input quality gate, as the service applies it, on every test image; and its
        # pass/catch table on real and transformed inputs (the model card's QC section).
        test_set = QcSet(
            "synthetic test" if params.ingest.source == "synthetic" else "test",
            pixels,
            gate_metadata(data.manifest.loc[test]),
            groups,
            True,
        )
        verdicts = predictor.quality_gate.check_many(test_set.images, test_set.metadata)
        benchmark = params.qc.benchmark_dir
        qc_rows = gate_table(
            predictor,
            test_set,
            Path(benchmark) if benchmark else None,
            ci=lambda values, g: _share_ci(values, g, p.n_boot, params.seed),
        )
    qc_passed = np.array([v.passed for v in verdicts])
    metrics: dict[str, object] = {"candidate": winner["candidate"], "threshold": threshold}
    # The cross-validated headline and its optimism, reported beside the test figure.
    compared = read_json(Path(paths.compare_dir) / "metrics.json")
    metrics.update(
        {k: v for k, v in compared.items() if k.startswith(("cv_auroc", "bbc_", "nested_"))}
    )
    metrics.update(
        summarise_scores(
            y_true,
            y_score,
            groups,
            n_boot=p.n_boot,
            seed=params.seed,
            n_bins=params.compare.n_bins,
            prefix="test_",
        )
    )
    for key in AT_THRESHOLD:
        ci = bootstrap_ci(
            functools.partial(_at_threshold, threshold=threshold, key=key),
            y_true,
            y_score,
            groups,
            n_boot=p.n_boot,
            seed=params.seed,
        )
        metrics.update(
            {
                f"test_{key}": ci.estimate,
                f"test_{key}_ci_low": ci.low,
                f"test_{key}_ci_high": ci.high,
            }
        )
    metrics.update(
        {f"test_{k}": v for k, v in auto_clear_share(y_true, y_score, threshold).items()}
    )
    metrics.update(_qc_passed_metrics(y_true, y_score, groups, qc_passed, threshold, params))
    metrics.update(qc_summary(qc_rows))
    # Similar cases on test (the reference set is train+val), beside the model's own AUROC.
    metrics.update(
        retrieval(
            similar_cases,
            scores.embeddings,
            y_true,
            groups,
            k=params.similar.k,
            winner_auroc=metrics["test_auroc"],
            n_boot=p.n_boot,
            seed=params.seed,
        )
    )
    frame = data.manifest.loc[
        test, ["image_id", "patient_id", "sex", "age", "view_position", "site"]
    ].assign(y_true=y_true, y_score=y_score)
    slices = slice_metrics(frame, "y_true", "y_score", threshold, min_count=p.min_slice_count)
    gaps = largest_gaps(slices)
    out = Path(paths.evaluate_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    frame[["image_id", "y_true", "y_score"]].to_csv(out / "test_scores.csv", index=False)
    slices.to_csv(out / "slices.csv", index=False)
    gaps.to_csv(out / "gaps.csv", index=False)
    roc = roc_points(y_true, y_score).assign(candidate=winner["candidate"])
    roc[["candidate", "fpr", "tpr"]].to_csv(out / "plots" / "roc.csv", index=False)
    reliability_curve(y_true, y_score, n_bins=params.compare.n_bins).assign(
        candidate=winner["candidate"]
    ).to_csv(out / "plots" / "calibration.csv", index=False)
    candidate = str(winner["candidate"])
    test_point = operating_point_table(
        candidate,
        threshold,
        float(metrics["test_sensitivity"]),
        float(metrics["test_specificity"]),
        "test",
    )
    test_point.to_csv(out / "plots" / "operating_point.csv", index=False)
    cv_point = operating_point_table(
        candidate,
        threshold,
        float(operating["sensitivity"]),
        float(operating["specificity"]),
        CV_WHERE,
    )
    render_roc_png(
        roc,
        out / "roc.png",
        title=f"ROC on test: {candidate}",
        subtitle=data_note(params),
        operating_points=pd.concat([test_point, cv_point], ignore_index=True),
    )
    write_json_atomically(out / "qc_table.json", [row.to_dict() for row in qc_rows])
    write_json_atomically(out / "metrics.json", metrics)
    write_json_atomically(Path(paths.metrics_file), headline_metrics(metrics))
    card = render_model_card(
        metrics=metrics,
        threshold=operating,
        winner=winner,
        comparison_md=(Path(paths.compare_dir) / "table.md").read_text(),
        gaps=gaps,
        data_note=data_note(params),
        counts=read_json(Path(paths.split_dir) / "counts.json"),
        qc_table=rows_markdown(qc_rows),
    )
    (out / "model_card.md").write_text(card)
    log.info(
        "evaluate: %s test AUROC %.3f (95%% CI %.3f-%.3f), sensitivity %.3f at %.4f",
        winner["candidate"],
        metrics["test_auroc"],
        metrics["test_auroc_ci_low"],
        metrics["test_auroc_ci_high"],
        metrics["test_sensitivity"],
        threshold,
    )
    return metrics


def main() -> None:
    run_stage("evaluate", run)


if __name__ == "__main__":
    main()
