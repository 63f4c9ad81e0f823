"""Do the explanations mean something? The figures of the ``explain`` stage, each beside its
baseline (the measures themselves are :mod:`cxr_triage.evaluation.saliency`):

- **localisation** on images with a known lesion region: hit rate and mIoU of the package's
  maps against the same of the centre-of-lung baseline map (a map that knows nothing of the
  image);
- **faithfulness**: deletion and insertion AUC of the map's pixel order against a random order,
  on test images the model calls abnormal;
- **sanity**: rank correlation of each map with the map of the same image after cascading
  randomisation of the network's layers, from the top; beside it, the correlation of maps of
  *different* images (what a shared spatial prior alone gives);
- **retrieval** (similar cases) on test: precision@k of label agreement and the AUROC of the
  k nearest references' vote, beside the winner's own test AUROC.

Every mean carries a patient-bootstrap 95% CI (:func:`cxr_triage.evaluation.metrics.mean_ci`),
paired differences too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from cxr_triage.evaluation.metrics import auroc, bootstrap_ci, mean_ci
from cxr_triage.evaluation.saliency import (
    curve_auc,
    deletion_insertion_steps,
    hit,
    iou,
    rank_correlation,
    two_lung_baseline,
)
from cxr_triage.inference.explain import Explainer, randomised

__all__ = [
    "HEADLINE_FIGURES",
    "box_region",
    "faithfulness",
    "headline_pair",
    "localisation",
    "nih_box_images",
    "retrieval",
    "sanity",
    "summary_lines",
    "synthetic_regions",
]

log = logging.getLogger(__name__)


def _ci(prefix: str, values: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict:
    ci = mean_ci(values, groups, n_boot=n_boot, seed=seed)
    return {prefix: ci.estimate, f"{prefix}_ci_low": ci.low, f"{prefix}_ci_high": ci.high}


def localisation(
    maps: np.ndarray,
    regions: np.ndarray,
    groups: np.ndarray,
    *,
    prefix: str,
    n_boot: int,
    seed: int,
) -> dict[str, float]:
    """Hit rate and mIoU of ``maps`` and of the centre-of-lung baseline on ``regions``.

    Args:
        maps: ``(N, S, S)`` saliency maps.
        regions: ``(N, S, S)`` boolean ground truth.
        groups: patient of each image.
        prefix: key prefix, e.g. ``synthetic_`` or ``nih_``.
    """
    n = len(maps)
    out: dict[str, float] = {f"{prefix}n": n}
    if n == 0:
        return out
    baseline = two_lung_baseline(maps.shape[-1])
    hits = np.array([hit(m, r) for m, r in zip(maps, regions, strict=True)], dtype=float)
    ious = np.array([iou(m, r) for m, r in zip(maps, regions, strict=True)])
    base_hits = np.array([hit(baseline, r) for r in regions], dtype=float)
    base_ious = np.array([iou(baseline, r) for r in regions])
    out.update(_ci(f"{prefix}hit_rate", hits, groups, n_boot, seed))
    out.update(_ci(f"{prefix}hit_rate_baseline", base_hits, groups, n_boot, seed))
    out.update(_ci(f"{prefix}miou", ious, groups, n_boot, seed))
    out.update(_ci(f"{prefix}miou_baseline", base_ious, groups, n_boot, seed))
    out.update(_ci(f"{prefix}miou_minus_baseline", ious - base_ious, groups, n_boot, seed))
    return out


def _blurred(image: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageFilter

    radius = max(1.0, image.shape[0] / 16)
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def faithfulness(
    explainer: Explainer,
    images: np.ndarray,
    maps: np.ndarray,
    groups: np.ndarray,
    *,
    n_steps: int,
    n_boot: int,
    seed: int,
) -> dict[str, float]:
    """Deletion and insertion AUC (probability of abnormal) in the map's order and in a random
    order; deleted pixels become a blurred copy of the image (sigma 1/16 of its side), which is
    also where insertion starts.

    Args:
        explainer: its predictor scores every step (the package's scoring path).
        images: ``uint8 (N, S, S)`` prepared images.
        maps: their ``(N, S, S)`` maps.
        groups: patient of each image.
        n_steps: steps of each curve.
    """
    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {k: [] for k in ("del", "ins", "del_rand", "ins_rand")}
    for image, saliency in zip(images, maps, strict=True):
        background = _blurred(image)
        order = np.argsort(-saliency.ravel(), kind="stable")
        shuffled = rng.permutation(order.size)
        batches = [
            *deletion_insertion_steps(image, order, background, n_steps),
            *deletion_insertion_steps(image, shuffled, background, n_steps),
        ]
        probs = explainer.predictor.score(np.concatenate(batches)).prob_abnormal
        curves = probs.reshape(4, n_steps + 1)
        for key, curve in zip(scores, curves, strict=True):
            scores[key].append(curve_auc(curve))
    values = {k: np.asarray(v) for k, v in scores.items()}
    out: dict[str, float] = {"faithfulness_n": len(images)}
    out.update(_ci("deletion_auc", values["del"], groups, n_boot, seed))
    out.update(_ci("deletion_auc_random", values["del_rand"], groups, n_boot, seed))
    out.update(
        _ci("deletion_auc_minus_random", values["del"] - values["del_rand"], groups, n_boot, seed)
    )
    out.update(_ci("insertion_auc", values["ins"], groups, n_boot, seed))
    out.update(_ci("insertion_auc_random", values["ins_rand"], groups, n_boot, seed))
    out.update(
        _ci("insertion_auc_minus_random", values["ins"] - values["ins_rand"], groups, n_boot, seed)
    )
    return out


def sanity(
    explainer: Explainer,
    images: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int,
    seed: int,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Cascading model randomisation (Adebayo et al. 2018): Spearman correlation of each map
    with the map after the top 1, 2, ... weighted layers are re-initialised.

    Maps are computed with the explainer's method through the package's torch network (the
    original too, so only the weights differ).

    Returns:
        ``(metrics, curve)``: the metrics with the fully randomised network's correlation and
        the different-images baseline; one curve row per cascade step.
    """
    network = explainer.network
    original, _ = explainer.saliency(images, network=network)
    steps = len(network.layer_names)
    curve: list[dict[str, Any]] = []
    last = np.full(len(images), np.nan)
    for k in range(1, steps + 1):
        maps, _ = explainer.saliency(images, network=randomised(network, k, seed + k))
        corr = np.array([rank_correlation(a, b) for a, b in zip(original, maps, strict=True)])
        valid = np.isfinite(corr)
        ci = mean_ci(corr[valid], groups[valid], n_boot=n_boot, seed=seed)
        curve.append(
            {
                "randomised_layers": k,
                "top_layer": network.layer_names[::-1][k - 1],
                "rank_correlation": ci.estimate,
                "ci_low": ci.low,
                "ci_high": ci.high,
                "n": int(valid.sum()),
            }
        )
        last = corr
    others = np.array(
        [
            rank_correlation(original[i], original[(i + 1) % len(images)])
            for i in range(len(images))
        ]
    )
    valid = np.isfinite(last)
    # A map that randomisation made constant (Grad-CAM's ReLU can zero it everywhere) has no
    # rank correlation: it is left out of the mean and counted; every one of them changed.
    out: dict[str, float] = {
        "sanity_n": len(images),
        "sanity_layers": steps,
        "sanity_constant_maps": int((~valid).sum()),
    }
    out.update(_ci("sanity_rank_corr", last[valid], groups[valid], n_boot, seed))
    ok = np.isfinite(others)
    out.update(_ci("sanity_rank_corr_other_images", others[ok], groups[ok], n_boot, seed))
    return out, curve


def retrieval(
    similar: Any,
    embeddings: np.ndarray,
    y_true: np.ndarray,
    groups: np.ndarray,
    *,
    k: int,
    winner_auroc: float | None,
    n_boot: int,
    seed: int,
) -> dict[str, float]:
    """Precision@k of label agreement and the kNN vote's AUROC on test images (queries never
    in the reference set: it holds train and val only).

    Args:
        similar: the package's :class:`~cxr_triage.inference.similar.SimilarCases`.
        embeddings: ``(N, D)`` package-network embeddings of the test images.
        y_true: their labels (1 = abnormal).
        groups: their patients.
        k: neighbours per query.
        winner_auroc: the model's own test AUROC, reported beside the vote's.
    """
    from cxr_triage.vocabulary import ABNORMAL

    found = similar.search(embeddings, k)
    agree = np.array(
        [
            np.mean([(c.label == ABNORMAL) == bool(t) for c in cases]) if cases else np.nan
            for cases, t in zip(found, y_true, strict=True)
        ]
    )
    vote = similar.vote(embeddings, k)
    out: dict[str, float] = {"retrieval_n": len(embeddings), "retrieval_k": k}
    out.update(_ci(f"precision_at_{k}", agree, groups, n_boot, seed))
    prevalence = float(np.mean(np.char.equal(similar.label.astype(str), ABNORMAL)))
    # Chance agreement: a neighbour of the same label drawn at random from the reference set.
    out[f"precision_at_{k}_chance"] = float(
        np.mean(np.where(np.asarray(y_true) == 1, prevalence, 1 - prevalence))
    )
    ci = bootstrap_ci(auroc, y_true, vote, groups, n_boot=n_boot, seed=seed)
    out.update({"knn_vote_auroc": ci.estimate, "knn_vote_auroc_ci_low": ci.low})
    out["knn_vote_auroc_ci_high"] = ci.high
    if winner_auroc is not None:
        out["winner_test_auroc"] = float(winner_auroc)
    return out


#: headline key -> (figure in ``metrics.json``, its baseline there); ``{box}`` is the run's own
#: boxes: ``synthetic`` on the synthetic default, ``nih`` (radiologists' boxes) on real data.
HEADLINE_FIGURES: dict[str, tuple[str, str]] = {
    "hit": ("{box}_hit_rate", "{box}_hit_rate_baseline"),
    "miou": ("{box}_miou", "{box}_miou_baseline"),
    "del": ("deletion_auc", "deletion_auc_random"),
    "ins": ("insertion_auc", "insertion_auc_random"),
    "rand_r": ("sanity_rank_corr", "sanity_rank_corr_other_images"),
}


def headline_pair(
    metrics: Mapping[str, Any], *, box: str
) -> tuple[dict[str, float], dict[str, float]]:
    """The explanation figures ``dvc metrics show`` lists: the package's maps and their
    baselines, as two files with the same short keys, so the baseline is the row below.

    Keys (:data:`HEADLINE_FIGURES`): ``hit`` and ``miou`` (localisation on the run's own boxes;
    baseline: the centre-of-lung map), ``del`` and ``ins`` (deletion and insertion AUC;
    baseline: a random order), ``rand_r`` (rank correlation with the map of the fully
    randomised network; baseline: maps of different images). A figure the run could not
    measure (no boxes, no torch network, every randomised map constant) is left out of both.

    Args:
        metrics: the explain stage's ``metrics.json``.
        box: ``synthetic`` or ``nih``.
    """
    maps: dict[str, float] = {}
    baselines: dict[str, float] = {}
    for key, (figure, baseline) in HEADLINE_FIGURES.items():
        figure, baseline = figure.format(box=box), baseline.format(box=box)
        if figure in metrics and baseline in metrics:
            pair = float(metrics[figure]), float(metrics[baseline])
            if all(np.isfinite(pair)):  # e.g. every randomised map constant: no correlation
                maps[key], baselines[key] = pair
    return maps, baselines


def summary_lines(metrics: Mapping[str, Any]) -> list[str]:
    """One log line per figure family."""
    lines = []
    for name, keys in (
        ("localisation (synthetic)", ("synthetic_hit_rate", "synthetic_hit_rate_baseline")),
        ("localisation (NIH boxes)", ("nih_hit_rate", "nih_hit_rate_baseline")),
        ("deletion AUC", ("deletion_auc", "deletion_auc_random")),
        ("insertion AUC", ("insertion_auc", "insertion_auc_random")),
        ("sanity rank corr", ("sanity_rank_corr", "sanity_rank_corr_other_images")),
    ):
        if keys[0] in metrics:
            lines.append(f"{name}: {metrics[keys[0]]:.3f} vs baseline {metrics[keys[1]]:.3f}")
    return lines


def box_region(boxes: Any, rows: int, cols: int, size: int) -> np.ndarray:
    """Boxes ``(x, y, w, h)`` in the stored image's pixels as a boolean ``(size, size)`` mask on
    the model's input: shifted by ``prepare_image``'s centred padding to a square of side
    ``max(rows, cols)``, then scaled to ``size``."""
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    scale = size / side
    mask = np.zeros((size, size), dtype=bool)
    for x, y, w, h in boxes:
        y0 = int(np.floor((y + top) * scale))
        x0 = int(np.floor((x + left) * scale))
        y1 = max(y0 + 1, int(np.ceil((y + h + top) * scale)))
        x1 = max(x0 + 1, int(np.ceil((x + w + left) * scale)))
        mask[max(0, y0) : min(size, y1), max(0, x0) : min(size, x1)] = True
    return mask


def synthetic_regions(synth_dir: Any, manifest: Any, size: int) -> dict[str, np.ndarray]:
    """The lesion region of each image of ``manifest`` the generator drew a box for
    (``<synth_dir>/<site>/lesion_boxes.csv``), keyed by ``image_id``.

    The generator's file names are not in the manifest (ingest keeps pseudonymous ids only), so
    each boxed file's ``image_id`` is derived as ingest derives it: the keyed digest of its SOP
    Instance UID with the synthetic data's public salt.
    """
    from pathlib import Path

    import pandas as pd
    import pydicom

    from cxr_triage.data.deid import Pseudonymiser, salt_from_env
    from cxr_triage.data.synth.generate import BOXES_FILE

    pseudonymiser = Pseudonymiser(salt_from_env(synthetic=True))
    wanted = set(manifest["image_id"].astype(str))
    regions: dict[str, np.ndarray] = {}
    for table in sorted(Path(synth_dir).glob(f"*/{BOXES_FILE}")):
        boxes = pd.read_csv(table)
        for name, rows in boxes.groupby("Image Index"):
            path = table.parent / "images" / str(name)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            image_id = pseudonymiser.image(str(ds.SOPInstanceUID).strip())
            if image_id not in wanted:
                continue
            regions[image_id] = box_region(
                rows[["x", "y", "w", "h"]].to_numpy(), int(ds.Rows), int(ds.Columns), size
            )
    return regions


def nih_box_images(
    nih_dir: Any, bbox_csv: Any, predictor: Any, *, seen_patient: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The shared NIH images that carry a radiologist's box (``BBox_List_2017.csv``, in the
    original 1024x1024 pixels), prepared as the package prepares them, with their regions on
    the model's input and their patients.

    Args:
        nih_dir: the folder with ``labels.csv`` and ``images/``.
        bbox_csv: the boxes.
        predictor: the package (its preparation and input size).
        seen_patient: ``raw patient id -> bool``: the package was trained (or chosen) on this
            patient; that patient's images are left out and counted. None of them is in a
            synthetic-trained package's data, so None there.

    Returns:
        ``(images uint8 (N, S, S), regions bool (N, S, S), groups, n_left_out)``.
    """
    from pathlib import Path

    import pandas as pd

    nih_dir, size = Path(nih_dir), predictor.image_size
    labels = pd.read_csv(nih_dir / "labels.csv", dtype={"patient_id": str})
    boxes = pd.read_csv(bbox_csv)
    boxes.columns = ["Image Index", "Finding Label", "x", "y", "w", "h", *boxes.columns[6:]]
    images, regions, groups = [], [], []
    left_out = 0
    for row in labels.itertuples():
        name = str(row.image).removeprefix("nih_")
        found = boxes[boxes["Image Index"] == name]
        if found.empty:
            continue
        if seen_patient is not None and seen_patient(str(row.patient_id)):
            left_out += 1
            continue
        prepared = predictor.prepare(nih_dir / "images" / row.image)
        rows, cols = int(prepared.metadata["orig_rows"]), int(prepared.metadata["orig_cols"])
        scale = cols / float(row.orig_width)  # the shared PNGs are the 1024 originals, resized
        xywh = found[["x", "y", "w", "h"]].to_numpy(dtype=float) * scale
        images.append(prepared.pixels)
        regions.append(box_region(xywh, rows, cols, size))
        groups.append(str(row.patient_id))
    if not images:
        empty = np.zeros((0, size, size))
        return empty.astype(np.uint8), empty.astype(bool), np.zeros(0, dtype=str), left_out
    return np.stack(images), np.stack(regions), np.asarray(groups), left_out
