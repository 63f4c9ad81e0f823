"""``compare`` stage: every candidate judged on its out-of-fold scores over train+val (repeated
patient-grouped CV), ensembles of the best, the winner by the rule in ``params.yaml``, and the
selection's optimism (BBC-CV over every candidate; nested CV of the frozen-feature candidates).

Writes the comparison report (``table.md``: per candidate the CV estimate with its uncertainty,
the rule's reasoning, the optimism, the ensembles' place, the metadata-only baseline, the
backbone-exposure check and the measured label leak, the winner per view and
leave-one-site-out), the winner and its calibrator (fitted on out-of-fold scores), the
winner's out-of-fold calibrated scores for the threshold, DVC plot data and PNGs. Test rows
are never read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import Dataset, load_dataset
from cxr_triage.errors import DataError
from cxr_triage.evaluation.compare import comparison_markdown
from cxr_triage.evaluation.metrics import auroc, reliability_curve
from cxr_triage.evaluation.optimism import bbc_cv, nested_cv, nested_cv_not_run
from cxr_triage.evaluation.plots import render_calibration_png, render_roc_png, roc_points
from cxr_triage.evaluation.selection import Selection, select_candidates
from cxr_triage.models.artifacts import FINETUNED, read_json
from cxr_triage.models.transfer import METADATA
from cxr_triage.stages._entry import data_note, run_stage
from cxr_triage.stages.finetune import OOF_FILE as FINETUNE_OOF
from cxr_triage.stages.transfer import (
    CONFIGS_FILE,
    FOLD_PRETRAINED_OOF_FILE,
    LOSO_FILE,
    OOF_FILE,
    smallest_fit,
)

log = logging.getLogger(__name__)
WINNER_OOF_FILE = "winner_oof.csv"
TABLE_COLUMNS = [
    "candidate",
    "cv_auroc",
    "cv_auroc_ci_low",
    "cv_auroc_ci_high",
    "cv_auroc_se",
    "cv_auroc_gap",
    "cv_auroc_gap_se",
    "repeats",
    "cv_auprc",
    "cv_brier",
    "cv_ece",
    "raw_cv_ece",
    "complexity",
    "cv_auroc_seen",
    "cv_auroc_unseen",
]
_KEY_METRICS = (
    "cv_auroc",
    "cv_auroc_ci_low",
    "cv_auroc_ci_high",
    "cv_auprc",
    "cv_brier",
    "cv_ece",
)


def _by_repeat(frame: pd.DataFrame, column: str, image_ids: np.ndarray) -> np.ndarray:
    """``(repeats, n)`` of one column of a long out-of-fold table, rows in ``image_ids`` order."""
    parts = []
    for _, part in frame.groupby("repeat", sort=True):
        values = part.set_index("image_id")[column].reindex(image_ids)
        if values.isna().any():
            raise DataError(
                f"out-of-fold scores of {column} miss some development images; re-run dvc repro"
            )
        parts.append(values.to_numpy(dtype=np.float64))
    return np.stack(parts)


def read_oof(params: Params, data: Dataset) -> dict[str, Any]:
    """Every candidate's out-of-fold scores on the development rows (manifest order)."""
    dev = data.development_rows()
    ids = data.image_ids(dev)
    transfer_dir = Path(params.paths.transfer_dir)
    zoo = pd.read_csv(transfer_dir / OOF_FILE, dtype={"image_id": str})
    configs = read_json(transfer_dir / CONFIGS_FILE)["configs"]
    config_scores = {name: _by_repeat(zoo, name, ids) for name in configs}
    family_of = {name: c["candidate"] for name, c in configs.items()}
    other: dict[str, np.ndarray] = {}
    if METADATA in zoo.columns:
        other[METADATA] = _by_repeat(zoo, METADATA, ids)
    finetune = pd.read_csv(Path(params.paths.finetune_dir) / FINETUNE_OOF, dtype={"image_id": str})
    if FINETUNED in finetune.columns:
        other[FINETUNED] = _by_repeat(finetune, FINETUNED, ids)
    return {
        "configs": configs,
        "config_scores": config_scores,
        "family_of": family_of,
        "other": other,
    }


def _recalibration(params: Params, names: list[str]) -> dict[str, str]:
    p = params.compare
    return {
        n: p.recalibrate_finetuned if n == FINETUNED else p.recalibrate_transfer for n in names
    }


def _kind(name: str, selection: Selection) -> str:
    if name in selection.ensembles:
        return "ensemble"
    if name == FINETUNED:
        return "finetuned"
    return "baseline" if name == METADATA else "zoo"


def _winner_record(selection: Selection, params: Params, row: pd.Series) -> dict[str, Any]:
    name = selection.winner.candidate
    calibrators = selection.comparison.calibrators
    recal = _recalibration(params, list(calibrators))
    members = selection.ensembles.get(name, ())

    def member(m: str) -> dict[str, Any]:
        return {
            "candidate": m,
            "kind": _kind(m, selection),
            "config": selection.representatives.get(m),
            "calibrator": calibrators[m].to_dict(),
        }

    return {
        **selection.winner.to_dict(),
        "kind": _kind(name, selection),
        "config": selection.representatives.get(name),
        "members": [member(m) for m in members],
        "recalibration": params.compare.recalibrate_transfer if members else recal[name],
        "calibrator": calibrators[name].to_dict(),
        **{k: float(row[k]) for k in _KEY_METRICS},
    }


def _label_leak(
    params: Params, data: Dataset, oof: dict[str, Any], selection: Selection, y: np.ndarray
) -> dict[str, Any]:
    """Each zoo candidate's chosen configuration scored on the same folds with the shared
    backbone and with one backbone per fold (transfer's FOLD_PRETRAINED_OOF_FILE).

    Returns:
        ``{}`` when not measured; else ``rows`` (per candidate: ``cv_auroc_shared`` and
        ``cv_auroc_fold_pretrained``, means over the same repeats, and ``label_leak``, their
        difference), ``repeats`` and ``measured_on``: the winner when it is a zoo candidate,
        else the zoo candidate with the best shared-backbone CV AUROC.
    """
    path = Path(params.paths.transfer_dir) / FOLD_PRETRAINED_OOF_FILE
    if not params.compare.fold_pretraining_repeats or not path.is_file():
        return {}
    frame = pd.read_csv(path, dtype={"image_id": str})
    ids = data.image_ids(data.development_rows())
    rows = []
    for family in sorted(set(oof["family_of"].values())):
        config = selection.representatives[family]
        per_fold = _by_repeat(frame, config, ids)
        repeats = per_fold.shape[0]
        shared = float(np.mean([auroc(y, s) for s in oof["config_scores"][config][:repeats]]))
        fold_pretrained = float(np.mean([auroc(y, s) for s in per_fold]))
        rows.append(
            {
                "candidate": family,
                "config": config,
                "cv_auroc_shared": shared,
                "cv_auroc_fold_pretrained": fold_pretrained,
                "label_leak": shared - fold_pretrained,
            }
        )
    winner = selection.winner.candidate
    if winner in {r["candidate"] for r in rows}:
        measured_on = winner
    else:
        measured_on = max(rows, key=lambda r: r["cv_auroc_shared"])["candidate"]
    return {"rows": rows, "repeats": repeats, "measured_on": measured_on}


def _label_leak_lines(params: Params, leak: dict[str, Any], winner: str) -> list[str]:
    b = params.backbone
    if not leak:
        if b.weights is None and not b.finding_labels:
            why = "none possible: the backbone learnt no label (backbone.finding_labels: false)"
        elif b.weights is not None:
            why = "not measured: backbone.weights came from a file, not pretrained on this run"
        else:
            why = "not measured (compare.fold_pretraining_repeats: 0)"
        return [f"**Backbone label leak**: {why}.", ""]
    table = pd.DataFrame(leak["rows"])
    on = leak["measured_on"]
    row = table.set_index("candidate").loc[on]
    whose = "the winner" if on == winner else f"{on}, the best zoo candidate ({winner} won)"
    n = leak["repeats"]
    repeats = "the first CV repeat" if n == 1 else f"the first {n} CV repeats"
    return [
        "**Backbone label leak, measured**: the backbone's finding-label pretraining was re-run "
        f"inside each outer fold of {repeats}, without the fold's held-out rows, and each zoo "
        "candidate's chosen configuration was re-scored on those features "
        "(compare.fold_pretraining_repeats). cv_auroc_shared is the same configuration on the "
        "same folds with the one shared backbone; the difference is the label leak. For "
        f"{whose}: {row['cv_auroc_shared']:.3f} with the shared backbone, "
        f"{row['cv_auroc_fold_pretrained']:.3f} without the leak (leak "
        f"{row['label_leak']:+.3f}). The fine-tuned network's CV also starts from the shared "
        "backbone and is not re-run.",
        "",
        comparison_markdown(table),
    ]


def _per_view(data: Dataset, dev: np.ndarray, y: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    views = data.manifest.loc[dev, "view_position"].astype(str).replace("", "unknown").to_numpy()
    rows = []
    for view in sorted(set(views)):
        mask = views == view
        ok = np.unique(y[mask]).size == 2
        value = float(np.mean([auroc(y[mask], s[mask]) for s in scores])) if ok else float("nan")
        rows.append(
            {
                "view_position": view,
                "n": int(mask.sum()),
                "prevalence": float(y[mask].mean()),
                "cv_auroc": value,
            }
        )
    return pd.DataFrame(rows)


def _nested(
    params: Params, data: Dataset, oof: dict[str, Any], y, groups, seen
) -> tuple[dict, list]:
    """Nested CV of the frozen-feature selection (the zoo and its ensembles)."""
    from cxr_triage.models.transfer import (
        cross_validate_configs,
        fit_config,
        positive_proba,
        zoo_configs,
    )

    c = params.compare
    if not c.nested:
        return nested_cv_not_run("compare.nested is false"), []
    dev = data.development_rows()
    X = np.asarray(np.load(Path(params.paths.embed_dir) / "embeddings.npy", mmap_mode="r")[dev])
    configs = zoo_configs(
        params.transfer.candidates, X.shape[1], smallest_fit(params, len(y)), params.seed
    )
    by_name = {cfg.name: cfg for cfg in configs}
    if set(by_name) != set(oof["configs"]):
        raise DataError("transfer's configurations differ from compare's; re-run dvc repro")
    zoo_only = select_candidates(
        oof["config_scores"],
        oof["family_of"],
        {},
        y,
        groups,
        c,
        recalibration=dict.fromkeys(set(oof["family_of"].values()), c.recalibrate_transfer),
        seen=seen,
        seed=params.seed,
    )

    def cross_validate(Xf, yf, gf, folds):  # noqa: ANN001, ANN202
        result = cross_validate_configs(
            configs, Xf, yf, gf, folds, seed=params.seed, n_jobs=params.transfer.n_jobs
        )
        return {name: result.scores[:, :, j] for j, name in enumerate(result.names)}

    def fit_predict(name, Xf, yf, gf, Xs):  # noqa: ANN001, ANN202
        return positive_proba(fit_config(by_name[name], Xf, yf, gf, seed=params.seed), Xs)

    estimate, records = nested_cv(
        X,
        y,
        groups,
        family_of=oof["family_of"],
        cross_validate=cross_validate,
        fit_predict=fit_predict,
        params=c,
        recalibration=c.recalibrate_transfer,
        apparent_scores=zoo_only.scores[zoo_only.winner.candidate],
        seed=params.seed,
    )
    return {**estimate.to_dict(), "zoo_winner": zoo_only.winner.candidate}, records


def _interval(d: dict[str, Any], key: str) -> str:
    return f"{d[key]:.3f} ({d[key + '_ci_low']:.3f} to {d[key + '_ci_high']:.3f})"


def _optimism_rows(c: Any, bbc: dict[str, Any], nested: dict[str, Any]) -> list[str]:
    rows = [
        "| estimator | covers | apparent CV AUROC | corrected AUROC (95% CI) "
        "| optimism (95% CI) |",
        "|---|---|---:|---:|---:|",
        f"| BBC-CV (Tsamardinos et al. 2018), {bbc['n']} patient resamples | every candidate "
        f"| {bbc['apparent']:.3f} | {_interval(bbc, 'corrected')} "
        f"| {_interval(bbc, 'optimism')} |",
    ]
    if "skipped" in nested:
        return [*rows, f"| nested CV | not run: {nested['skipped']} | | | |"]
    return [
        *rows,
        f"| nested CV ({nested['n']} outer x {c.nested_inner_folds} inner folds) | zoo + "
        f"ensembles (zoo winner: {nested['zoo_winner']}) | {nested['apparent']:.3f} "
        f"| {_interval(nested, 'corrected')} | {_interval(nested, 'optimism')} |",
    ]


def _report(
    params: Params,
    selection: Selection,
    table: pd.DataFrame,
    bbc: dict[str, Any],
    nested: dict[str, Any],
    nested_folds: list[dict[str, Any]],
    views: pd.DataFrame,
    loso: pd.DataFrame,
    leak: dict[str, Any],
) -> str:
    c, rule = params.compare, params.compare.winner
    w = selection.winner
    by_name = table.set_index("candidate")
    rank = {name: i + 1 for i, name in enumerate(table["candidate"])}
    ens = "; ".join(
        f"{n} = calibrated mean of {', '.join(m)}, ranked {rank[n]} of {len(table)} (gap "
        f"{by_name.loc[n, 'cv_auroc_gap']:.3f}, SE {by_name.loc[n, 'cv_auroc_gap_se']:.3f})"
        for n, m in selection.ensembles.items()
    )
    calibrator = by_name.loc[w.candidate, "recalibration"]
    lines = [
        f"Comparison on train+val ({int(table['n'].iloc[0])} images) by patient-grouped, "
        f"label-stratified {c.cv_folds}-fold CV repeated {c.cv_repeats} time(s) "
        f"(fine-tuned network: {params.finetune.cv_repeats} repeat(s)); the test split is not "
        f"read. {data_note(params)}.",
        "",
        "cv_auroc: mean over repeats of the pooled out-of-fold AUROC, with a patient-bootstrap "
        "95% CI and standard error; cv_auroc_gap: distance to the best, with the paired "
        "bootstrap standard error of that distance; calibration (cv_brier, cv_ece) after "
        "recalibration cross-fitted on the out-of-fold scores (raw_cv_ece: before); "
        "complexity: the rule's tie-breaker rank; cv_auroc_seen/unseen: rows of the train/val "
        "split (see below).",
        "",
        comparison_markdown(
            table, columns=[col for col in TABLE_COLUMNS if col in table], winner=w.candidate
        ),
        f"**Rule** (params.yaml compare.winner: {rule.rule}, {rule.se_multiplier:g} SE, "
        f"tie-breaker {rule.tie_breaker}): {w.reason}. The metadata-only baseline is measured, "
        "never chosen.",
        "",
        f"**Winner: {w.candidate}**, refitted on all of train+val; its calibrator ({calibrator}) "
        "and the threshold come from its out-of-fold scores.",
        "",
        f"**Ensembles**: {ens or 'none built'}.",
        "",
        "**Optimism of the selection** (the winner's curse of picking the best of many noisy "
        "estimates):",
        "",
        *_optimism_rows(c, bbc, nested),
        "",
    ]
    if nested_folds:
        folds = "; ".join(
            f"fold {r['fold']}: {r['winner']} (inner {r['inner_cv_auroc']:.3f}, "
            f"outer {r['outer_auroc']:.3f})"
            for r in nested_folds
        )
        lines += [f"Nested CV outer folds: {folds}.", ""]
    chosen = ", ".join(f"{k} {v}x" for k, v in bbc["chosen"].items())
    lines += [
        "BBC-CV re-runs the selection (best configuration per candidate, then the rule) on each "
        "resample's in-bag patients and scores the choice on the out-of-bag patients; it covers "
        "the fine-tuned network at no training cost but holds the ensembles' membership fixed. "
        "Nested CV re-runs everything, training included, but only for the frozen-feature "
        "candidates (the fine-tuned network would need folds x inner folds trainings). "
        f"BBC-CV chose: {chosen}.",
        "",
    ]
    if "cv_auroc_seen" in table:
        seen, unseen = by_name.loc[w.candidate, ["cv_auroc_seen", "cv_auroc_unseen"]]
        lines += [
            "**Backbone label exposure**: the backbone was pretrained on the train split's "
            "finding labels, so folds score train-split patients through features shaped by "
            f"their own labels. Winner's out-of-fold AUROC on train-split rows {seen:.3f}, on "
            f"val-split rows (never seen by the backbone) {unseen:.3f}: a leak shows as seen > "
            f"unseen (difference {seen - unseen:+.3f}; val is small, so read it against the CI "
            "widths above).",
            "",
        ]
    lines += _label_leak_lines(params, leak, w.candidate)
    lines += ["**Winner per view** (out-of-fold):", "", comparison_markdown(views)]
    if len(loso):
        lines += [
            "**Leave one site out** (each candidate's configuration trained on the other sites, "
            "scoring the site left out):",
            "",
            comparison_markdown(loso),
        ]
    return "\n".join(lines) + "\n"


def run(params: Params) -> dict[str, object]:
    """Write ``paths.compare_dir``: table.csv/.md, winner.json, optimism.json, metrics.json,
    winner_oof.csv, plots/, PNGs."""
    c = params.compare
    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    dev = data.development_rows()
    y, groups = data.labels(dev), data.patients(dev)
    seen = data.manifest.loc[dev, "split"].eq("train").to_numpy()
    oof = read_oof(params, data)
    names = sorted(set(oof["family_of"].values())) + list(oof["other"])
    no_ensemble = [] if c.ensemble.include_finetuned else [FINETUNED]
    selection = select_candidates(
        oof["config_scores"],
        oof["family_of"],
        oof["other"],
        y,
        groups,
        c,
        recalibration=_recalibration(params, names),
        ineligible=[METADATA],
        no_ensemble=no_ensemble,
        seen=seen,
        seed=params.seed,
    )
    table = selection.comparison.table.copy()
    table.insert(1, "kind", [_kind(n, selection) for n in table["candidate"]])
    winner = selection.winner.candidate
    row = table.set_index("candidate").loc[winner]
    columns = {**oof["config_scores"]}
    columns.update(
        {
            n: s
            for n, s in selection.scores.items()
            if n not in oof["family_of"].values() and n != METADATA
        }
    )
    family_of = {**oof["family_of"], **{n: n for n in columns if n not in oof["family_of"]}}
    bbc = bbc_cv(
        columns,
        family_of,
        y,
        groups,
        table=table,
        rule=c.winner,
        apparent=float(row["cv_auroc"]),
        n_boot=c.n_boot,
        seed=params.seed,
    ).to_dict()
    nested, nested_folds = _nested(params, data, oof, y, groups, seen)
    calibrated = selection.comparison.calibrated[winner]
    views = _per_view(data, dev, y, selection.scores[winner])
    loso = pd.read_csv(Path(params.paths.transfer_dir) / LOSO_FILE)
    leak = _label_leak(params, data, oof, selection, y)

    out = Path(params.paths.compare_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(
        _report(params, selection, table, bbc, nested, nested_folds, views, loso, leak)
    )
    repeats, n = calibrated.shape
    pd.DataFrame(
        {
            "image_id": np.tile(data.image_ids(dev), repeats),
            "repeat": np.repeat(np.arange(repeats), n),
            "y_true": np.tile(y, repeats),
            "y_score": calibrated.reshape(-1),
        }
    ).to_csv(out / WINNER_OOF_FILE, index=False)
    roc = pd.concat(
        [roc_points(y, s[0]).assign(candidate=name) for name, s in selection.scores.items()],
        ignore_index=True,
    )
    calibration = pd.concat(
        [
            reliability_curve(y, cal[0], n_bins=c.n_bins).assign(candidate=name)
            for name, cal in selection.comparison.calibrated.items()
        ],
        ignore_index=True,
    )
    roc[["candidate", "fpr", "tpr"]].to_csv(out / "plots" / "roc.csv", index=False)
    calibration[["candidate", "mean_predicted", "fraction_positive", "count"]].to_csv(
        out / "plots" / "calibration.csv", index=False
    )
    render_roc_png(
        roc, out / "roc.png", title="ROC out of fold (train+val CV)", subtitle=data_note(params)
    )
    render_calibration_png(
        calibration,
        out / "calibration.png",
        title="Reliability out of fold (recalibrated, cross-fitted)",
        subtitle=data_note(params),
    )
    write_json_atomically(out / "winner.json", _winner_record(selection, params, row))
    write_json_atomically(
        out / "optimism.json",
        {"bbc_cv": bbc, "nested_cv": nested, "nested_folds": nested_folds, "label_leak": leak},
    )
    metrics: dict[str, Any] = {
        "winner": winner,
        **{k: float(row[k]) for k in _KEY_METRICS},
        "cv_auroc_gap_se_to_best": float(row["cv_auroc_gap_se"]),
        "bbc_auroc": bbc["corrected"],
        "bbc_optimism": bbc["optimism"],
        "bbc_optimism_ci_low": bbc["optimism_ci_low"],
        "bbc_optimism_ci_high": bbc["optimism_ci_high"],
    }
    if "skipped" not in nested:
        metrics.update(
            nested_auroc=nested["corrected"],
            nested_optimism=nested["optimism"],
            nested_optimism_ci_low=nested["optimism_ci_low"],
            nested_optimism_ci_high=nested["optimism_ci_high"],
        )
    if leak:
        measured = {r["candidate"]: r for r in leak["rows"]}[leak["measured_on"]]
        metrics["cv_auroc_label_leak"] = measured["label_leak"]
        if leak["measured_on"] == winner:
            metrics["cv_auroc_fold_pretrained"] = measured["cv_auroc_fold_pretrained"]
    if METADATA in set(table["candidate"]):
        metrics["metadata_only_cv_auroc"] = float(
            table.set_index("candidate").loc[METADATA, "cv_auroc"]
        )
    write_json_atomically(out / "metrics.json", metrics)
    log.info(
        "compare: %d candidates; winner %s (cv AUROC %.3f, BBC-CV %.3f, optimism %.3f)",
        len(table),
        winner,
        row["cv_auroc"],
        bbc["corrected"],
        bbc["optimism"],
    )
    return metrics


def main() -> None:
    run_stage("compare", run)


if __name__ == "__main__":
    main()
