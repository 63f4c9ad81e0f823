"""``explain`` stage: do the package's explanations mean something? (after ``evaluate``)

Scores through a model package built as ``evaluate`` builds it, explains with the package's
method (:func:`~cxr_triage.inference.explain.choose_method`) and writes
``paths.explain_dir``:

- ``metrics.json`` (a DVC metrics file), each figure beside its baseline, with
  patient-bootstrap 95% CIs (:mod:`cxr_triage.inference.explain_report`):
  localisation on the synthetic test images with a generator box (``synthetic_*``) and on the
  shared NIH images with a radiologist's box (``nih_*``; on a real-data run, only those of
  patients outside train and val: ``nih_left_out_development_images`` counts the others),
  against the centre-of-lung map;
  deletion and insertion AUC against a random order; the rank correlation after cascading
  weight randomisation against that of different images' maps;
- ``maps.json`` and ``baselines.json`` (the DVC metrics files of this stage): five figures
  with the same short keys (:func:`~cxr_triage.inference.explain_report.headline_pair`), so
  ``dvc metrics show`` lists the maps' row with the baselines' row below it;
- ``sanity.csv``: the randomisation curve, one row per randomised layer;
- ``model_card_section.md``: the same figures as the model card's section (the ``package``
  stage adds it to the package's card).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.atomic import write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import load_dataset
from cxr_triage.data.deid import Pseudonymiser, salt_from_env
from cxr_triage.inference.explain import Explainer
from cxr_triage.inference.explain_report import (
    faithfulness,
    headline_pair,
    localisation,
    nih_box_images,
    sanity,
    summary_lines,
    synthetic_regions,
)
from cxr_triage.inference.package import package_from_params
from cxr_triage.inference.predictor import Predictor
from cxr_triage.stages._entry import run_stage

log = logging.getLogger(__name__)
SECTION_FILE = "model_card_section.md"
MAPS_FILE, BASELINES_FILE = "maps.json", "baselines.json"


def _pick(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` of ``rows``, drawn at random (fixed seed), in their order."""
    if len(rows) <= n:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def _development_patient(params: Params, data: Any) -> Callable[[str], bool] | None:
    """``raw patient id -> bool``: the patient is in train or val, so the package was fitted or
    chosen on their images (real data only: a synthetic run has no NIH patient, and its
    pseudonyms use the public salt)."""
    if params.ingest.source == "synthetic":
        return None
    pseudonymiser = Pseudonymiser(salt_from_env(synthetic=False))
    development = set(data.patients(data.development_rows()).astype(str))
    return lambda raw: pseudonymiser.patient(raw) in development


def run(params: Params) -> dict[str, Any]:
    """Write ``paths.explain_dir``: metrics.json, maps.json, baselines.json, sanity.csv,
    model_card_section.md."""
    e, paths = params.explain, params.paths
    data = load_dataset(paths.ingest_dir, paths.split_dir)
    test = data.rows("test")
    manifest = data.manifest.loc[test]
    out = Path(paths.explain_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = {"n_boot": e.n_boot, "seed": params.seed}
    with tempfile.TemporaryDirectory(prefix="cxr-explain-") as tmp:
        package_from_params(params, Path(tmp), data)
        predictor = Predictor(tmp)
        explainer = Explainer(predictor)
        metrics: dict[str, Any] = {"method": explainer.method}
        size = predictor.image_size
        if params.ingest.source == "synthetic":
            regions = synthetic_regions(paths.synth_dir, manifest, size)
            boxed = np.array([r for r in test if data.manifest.at[r, "image_id"] in regions])
            boxed = _pick(boxed, e.max_images, params.seed)
            if len(boxed):
                maps, _ = explainer.saliency(np.asarray(data.pixels[boxed]))
                truth = np.stack([regions[data.manifest.at[r, "image_id"]] for r in boxed])
                groups = data.patients(boxed)
                metrics.update(localisation(maps, truth, groups, prefix="synthetic_", **kw))
        if e.bbox_csv and Path(e.bbox_csv).is_file():
            images, truth, groups, left_out = nih_box_images(
                Path(e.bbox_csv).parent,
                e.bbox_csv,
                predictor,
                seen_patient=_development_patient(params, data),
            )
            metrics["nih_left_out_development_images"] = left_out
            if len(images):
                maps, _ = explainer.saliency(images)
                metrics.update(localisation(maps, truth, groups, prefix="nih_", **kw))
        # Faithfulness on the test images the model calls abnormal (what a map is shown for).
        scores = predictor.score(np.asarray(data.pixels[test])).prob_abnormal
        flagged = _pick(test[scores >= predictor.threshold], e.max_images, params.seed)
        if len(flagged):
            images = np.asarray(data.pixels[flagged])
            maps, _ = explainer.saliency(images)
            metrics.update(
                faithfulness(
                    explainer, images, maps, data.patients(flagged), n_steps=e.n_steps, **kw
                )
            )
            if predictor.info.get("torch_network"):
                few = flagged[: e.sanity_images]
                found, curve = sanity(
                    explainer, np.asarray(data.pixels[few]), data.patients(few), **kw
                )
                metrics.update(found)
                pd.DataFrame(curve).to_csv(out / "sanity.csv", index=False)
    if not (out / "sanity.csv").exists():
        pd.DataFrame(columns=["randomised_layers", "top_layer", "rank_correlation"]).to_csv(
            out / "sanity.csv", index=False
        )
    write_json_atomically(out / "metrics.json", metrics)
    box = "synthetic" if params.ingest.source == "synthetic" else "nih"
    maps, baselines = headline_pair(metrics, box=box)
    write_json_atomically(out / MAPS_FILE, maps)
    write_json_atomically(out / BASELINES_FILE, baselines)
    (out / SECTION_FILE).write_text(card_section(metrics), encoding="utf-8")
    for line in summary_lines(metrics):
        log.info("explain: %s", line)
    return metrics


def _fmt(m: dict[str, Any], key: str) -> str:
    if key not in m:
        return "n/a"
    low, high = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    ci = f" ({low:.3f} - {high:.3f})" if low is not None and high is not None else ""
    return f"{m[key]:.3f}{ci}"


def card_section(m: dict[str, Any]) -> str:
    """The model card's section on explanations: every figure beside its baseline."""
    rows = [
        ("localisation, synthetic boxes: hit rate", "synthetic_hit_rate",
         "centre-of-lung map", "synthetic_hit_rate_baseline", "synthetic_n"),
        ("localisation, synthetic boxes: mIoU", "synthetic_miou",
         "centre-of-lung map", "synthetic_miou_baseline", "synthetic_n"),
        ("localisation, NIH radiologists' boxes: hit rate", "nih_hit_rate",
         "centre-of-lung map", "nih_hit_rate_baseline", "nih_n"),
        ("localisation, NIH radiologists' boxes: mIoU", "nih_miou",
         "centre-of-lung map", "nih_miou_baseline", "nih_n"),
        ("deletion AUC (lower: more faithful)", "deletion_auc",
         "random order", "deletion_auc_random", "faithfulness_n"),
        ("insertion AUC (higher: more faithful)", "insertion_auc",
         "random order", "insertion_auc_random", "faithfulness_n"),
        ("rank correlation after randomising every layer (lower: the map depends on the "
         "weights)", "sanity_rank_corr", "maps of different images",
         "sanity_rank_corr_other_images", "sanity_n"),
    ]  # fmt: skip
    lines = [
        "## Explanations",
        f"Method: {m.get('method')} (the package's rule; README, Explanations). 95% "
        "patient-bootstrap CIs.",
        "",
        "| figure | value | baseline | baseline value | n |",
        "|---|---|---|---|---:|",
    ]
    for name, key, base_name, base_key, n_key in rows:
        if key in m:
            lines.append(
                f"| {name} | {_fmt(m, key)} | {base_name} | {_fmt(m, base_key)} "
                f"| {m.get(n_key, '')} |"
            )
    if m.get("sanity_constant_maps"):
        lines += [
            "",
            f"{m['sanity_constant_maps']} of the {m['sanity_n']} maps became constant once every "
            "layer was randomised (no rank correlation: left out of its mean, and changed).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    run_stage("explain", run)


if __name__ == "__main__":
    main()
