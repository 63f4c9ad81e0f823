"""The model card: a short Markdown summary of what the model is, how it did, and its limits."""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["render_model_card"]


def _pct(value: Any) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{100 * float(value):.1f}%"


def _num(value: Any) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{float(value):.3f}"


def _ci_rows(m: dict[str, Any]) -> str:
    rows = []
    for key, name, fmt in (
        ("auroc", "AUROC", _num),
        ("auprc", "AUPRC", _num),
        ("sensitivity", "sensitivity", _pct),
        ("specificity", "specificity", _pct),
        ("ppv", "PPV", _pct),
        ("npv", "NPV", _pct),
    ):
        low, high = m[f"test_{key}_ci_low"], m[f"test_{key}_ci_high"]
        rows.append(f"| {name} | {fmt(m[f'test_{key}'])} | {fmt(low)} - {fmt(high)} |")
    rows += [f"| Brier | {_num(m['test_brier'])} | |", f"| ECE | {_num(m['test_ece'])} | |"]
    return "\n".join(rows)


def _headline_rows(m: dict[str, Any]) -> str:
    """CV estimate, its optimism and the bias-corrected figure, beside the test AUROC."""
    rows = (
        (
            "CV over train+val (winner, apparent)",
            "cv_auroc",
            "cv_auroc_ci_low",
            "cv_auroc_ci_high",
        ),
        (
            "selection optimism (BBC-CV)",
            "bbc_optimism",
            "bbc_optimism_ci_low",
            "bbc_optimism_ci_high",
        ),
        ("bias-corrected CV (BBC-CV)", "bbc_auroc", None, None),
        # compare.fold_pretraining_repeats: measured when the backbone learnt this run's labels
        (
            "CV, backbone re-pretrained per fold (no label leak)",
            "cv_auroc_fold_pretrained",
            None,
            None,
        ),
        ("backbone label leak (CV AUROC)", "cv_auroc_label_leak", None, None),
        ("held-out test", "test_auroc", "test_auroc_ci_low", "test_auroc_ci_high"),
    )
    measured_only = {"cv_auroc_fold_pretrained", "cv_auroc_label_leak"}  # rows shown when run
    rows = tuple(r for r in rows if r[1] in m or r[1] not in measured_only)
    return "\n".join(
        f"| {name} | {_num(m.get(key))} | "
        + (f"{_num(m.get(low))} - {_num(m.get(high))}" if low else "")
        + " |"
        for name, key, low, high in rows
    )


def _qc_passed_line(m: dict[str, Any]) -> str:
    return (
        f"AUROC {_num(m.get('test_qc_passed_auroc'))} (95% CI "
        f"{_num(m.get('test_qc_passed_auroc_ci_low'))} - "
        f"{_num(m.get('test_qc_passed_auroc_ci_high'))}), sensitivity "
        f"{_pct(m.get('test_qc_passed_sensitivity'))} and specificity "
        f"{_pct(m.get('test_qc_passed_specificity'))} at the threshold"
    )


def _retrieval_lines(m: dict[str, Any]) -> str:
    k = m.get("retrieval_k")
    if k is None:
        return "Not measured."
    p = f"precision_at_{k}"
    return (
        f"Of each test image's {k} nearest reference cases, {_pct(m.get(p))} share its label "
        f"(95% CI {_pct(m.get(p + '_ci_low'))} - {_pct(m.get(p + '_ci_high'))}; chance "
        f"{_pct(m.get(p + '_chance'))}). The neighbours' abnormal share as a score has AUROC "
        f"{_num(m.get('knn_vote_auroc'))} (95% CI {_num(m.get('knn_vote_auroc_ci_low'))} - "
        f"{_num(m.get('knn_vote_auroc_ci_high'))}), beside the model's "
        f"{_num(m.get('test_auroc'))}."
    )


def render_model_card(
    *,
    metrics: dict[str, Any],
    threshold: dict[str, Any],
    winner: dict[str, Any],
    comparison_md: str,
    gaps: pd.DataFrame,
    data_note: str,
    counts: dict[str, Any],
    qc_table: str | None = None,
) -> str:
    """Markdown model card from the evaluate stage's figures (nothing here is computed).

    ``qc_table``: the input quality gate's pass/catch table (Markdown), when measured.
    """
    m = metrics
    gap_lines = (
        "\n".join(
            f"| {row.metric} | {row.slice} | {_num(row.gap)} "
            f"| {row.best_value} ({_num(row.best)}) | {row.worst_value} ({_num(row.worst)}) |"
            for row in gaps.itertuples()
        )
        or "| - | - | - | - | - |"
    )
    split_lines = "\n".join(
        f"| {name} | {c['n_images']} | {c['n_patients']} | {_pct(c['prevalence'])} |"
        for name, c in counts.items()
    )
    return f"""# Model card: cxr-triage Normal/Abnormal

**NOT FOR CLINICAL USE.** A research and engineering demonstration; it has not been validated
for patient care and must not be used to make or delay any clinical decision.

## Intended use
Prioritising a chest X-ray reading worklist: studies scored above the threshold are read first;
the operating point targets high sensitivity so that few abnormal studies are deprioritised.
Inputs: frontal (PA/AP) chest radiographs, CR or DX DICOM or PNG/JPEG. Not for lateral views,
children, other body parts or modalities, or any use without a radiologist reading every study.

## Data
{data_note}

| split | images | patients | prevalence (abnormal) |
|---|---|---|---|
{split_lines}

Splits are patient-disjoint. Model, recalibration, threshold and winner were fixed by
patient-grouped cross-validation over train+val (the winner refitted on all of it); the test split
was read once, for this card.

## Model
Winner: **{winner["candidate"]}** (recalibration: {winner["recalibration"]}). {winner["reason"]}

{comparison_md}

## Headline: cross-validated estimate beside the held-out test
| estimate | AUROC | 95% interval |
|---|---|---|
{_headline_rows(m)}

## Test performance (95% patient-bootstrap CIs)
| metric | value | 95% CI |
|---|---|---|
{_ci_rows(m)}

Operating point: threshold {threshold["threshold"]:.4f} ({threshold["policy"]}, chosen on the
out-of-fold train+val scores: sensitivity {_pct(threshold["sensitivity"])}, specificity
{_pct(threshold["specificity"])}).
At this point {_pct(m["test_normal_cleared_share"])} of normal test studies (and
{_pct(m["test_worklist_cleared_share"])} of all test studies) would be moved down the worklist,
while {_pct(m["test_abnormal_cleared_share"])} of abnormal studies would be too.

## Input quality gate
The service refuses (HTTP 422 `qc_failed`) what the gate's refusing checks catch, and scores the
rest with the verdict attached. It passes {_pct(m.get("test_qc_passed_share"))} of the test
images. On those: {_qc_passed_line(m)} (all test images: above).

{qc_table or "Not measured (no `qc.benchmark_dir`)."}

"Caught" is refused; "flagged" also counts checks that only warn. Shares with 95%
patient-bootstrap CIs (non-chest inputs: per image).

## Similar cases (test images against the train+val reference set)
{_retrieval_lines(m)}

## Fairness (test, per slice; largest gap per metric)
| metric | slice | gap | best | worst |
|---|---|---|---|---|
{gap_lines}

Slices with fewer than the configured minimum images are listed in `slices.csv` but not ranked.

## Limits
- Labels of public datasets such as ChestX-ray14 were mined from reports and are noisy.
- Performance depends on acquisition: monitor drift at every new site before trusting scores.
- Synthetic data, where used, is a stand-in: its figures say nothing about real patients.
"""
