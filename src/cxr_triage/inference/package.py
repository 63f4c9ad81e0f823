"""Package assembly: the pipeline's winner as one model package folder (see
:mod:`~cxr_triage.inference.layout` for what the folder holds).

:func:`assemble_package` writes one from the pipeline's outputs; the ``evaluate`` stage scores
test through a temporary one and ``package`` keeps one, so both use the same code path as every
other consumer of the :class:`~cxr_triage.inference.predictor.Predictor`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.atomic import atomic_path, write_json_atomically
from cxr_triage.errors import DataError
from cxr_triage.inference.layout import (
    CLASSIFIER_FILE,
    FORMAT_VERSION,
    MEMBER_FILE,
    MODEL_NAME,
    NEIGHBOURS_FILE,
    NETWORK_FILE,
    PACKAGE_FILE,
    PROJECTION_FILE,
    PROVENANCE_KEYS,
    QC_FILE,
    TORCH_NETWORK_FILE,
)
from cxr_triage.inference.predictor import embed_with_network
from cxr_triage.io.records import ImageLimits
from cxr_triage.models.artifacts import (
    FINETUNED,
    load_backbone,
    load_finetuned,
    read_json,
    save_state,
)
from cxr_triage.vocabulary import CLASS_NAMES

__all__ = [
    "PackageSources",
    "RadiologistSettings",
    "ReferenceSet",
    "assemble_package",
    "content_version",
    "finalise_package",
    "fit_projection",
    "package_from_params",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageSources:
    """Where the pipeline's trained artifacts are (``params.paths``)."""

    backbone_dir: Path
    transfer_dir: Path
    finetune_dir: Path
    compare_dir: Path
    threshold_dir: Path


@dataclass(frozen=True)
class ReferenceSet:
    """The package's reference images: train and val (never test), with their manifest rows.

    ``images`` are the prepared ``uint8 (N, S, S)`` images; ``manifest`` has ``split``,
    ``image_id``, ``label``, the finding columns and ``burned_in_annotation`` where known.
    """

    images: np.ndarray
    manifest: Any

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.manifest["split"].to_numpy() == split)


@dataclass(frozen=True)
class RadiologistSettings:
    """What the package records for the quality gate, explanations and similar cases
    (``params.yaml`` ``qc``, ``explain``, ``similar``)."""

    qc: Any  # cxr_triage.config.QcParams
    explain: Any  # cxr_triage.config.ExplainParams
    similar: Any  # cxr_triage.config.SimilarParams
    seed: int = 0


def _embedding_and_logit(classifier: Any, frozen: Any = None) -> Any:
    """One module giving ``[embedding, logit]`` per image: the embedding of ``frozen`` (a frozen
    backbone, for an ensemble) or else of the fine-tuned network itself, then its logit."""
    import torch
    from torch import nn

    class EmbeddingAndLogit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = classifier.backbone, classifier.head
            self.frozen = frozen
            self.in_channels = getattr(classifier.backbone, "in_channels", 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.backbone(x)
            embedding = features if self.frozen is None else self.frozen(x)
            return torch.cat([embedding, self.head(features)], dim=1)

    return EmbeddingAndLogit().eval()


def _copy_classifier(sources: PackageSources, candidate: str, target: Path) -> None:
    skops = Path(sources.transfer_dir) / f"{candidate}.skops"
    if not skops.is_file():
        raise DataError(f"{skops} is missing; run `dvc repro transfer`")
    shutil.copyfile(skops, target)


def _write_network(
    winner: dict[str, Any], sources: PackageSources, out: Path, image_size: int
) -> tuple[str, dict[str, Any]]:
    """Write ``network.onnx``, its torch weights (``network.safetensors``, when the network is
    a torch one) and the classifiers; return the package kind and its extra ``package.json``
    keys (``torch_network``: architecture and head, None when ONNX only or an ensemble)."""
    from cxr_triage.models.weights import export_onnx

    candidate = winner["candidate"]
    if candidate == FINETUNED:
        classifier, info = load_finetuned(sources.finetune_dir)
        with atomic_path(out / NETWORK_FILE) as tmp:
            export_onnx(_embedding_and_logit(classifier), tmp, image_size)
        save_state(classifier, out / TORCH_NETWORK_FILE)
        return "finetuned", {"torch_network": {"arch": info["arch"], "head": "finetuned"}}
    backbone, info = load_backbone(Path(sources.backbone_dir))
    members = winner.get("members") or []
    if members:
        has_logit = any(m["candidate"] == FINETUNED for m in members)
        for m in members:
            if m["candidate"] != FINETUNED:
                _copy_classifier(sources, m["candidate"], out / MEMBER_FILE.format(m["candidate"]))
        if has_logit:
            classifier, _ = load_finetuned(sources.finetune_dir)
            network = _embedding_and_logit(classifier, frozen=backbone)
        else:
            network = backbone
        with atomic_path(out / NETWORK_FILE) as tmp:
            export_onnx(network, tmp, image_size)
        listed = [
            {"candidate": m["candidate"], "kind": m["kind"], "calibrator": m["calibrator"]}
            for m in members
        ]
        return "ensemble", {"members": listed, "network_logit": has_logit, "torch_network": None}
    _copy_classifier(sources, candidate, out / CLASSIFIER_FILE)
    if info["format"] == "onnx":
        shutil.copyfile(Path(sources.backbone_dir) / "backbone.onnx", out / NETWORK_FILE)
        return "transfer", {"torch_network": None}
    with atomic_path(out / NETWORK_FILE) as tmp:
        export_onnx(backbone, tmp, image_size)
    save_state(backbone, out / TORCH_NETWORK_FILE)
    # Logistic regression on the frozen features is linear: Grad-CAM can go through it.
    head = "linear" if candidate == "logreg" else "none"
    return "transfer", {"torch_network": {"arch": info["arch"], "head": head}}


def fit_projection(embeddings: np.ndarray, n_components: int) -> dict[str, np.ndarray]:
    """Mean and the first principal axes of ``embeddings`` (rows = images)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) < 2:
        raise DataError("at least 2 training images are needed to fit the embedding summary")
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(n_components, vt.shape[0])
    # Fix each axis's sign (largest loading positive) so that refits give the same summary.
    signs = np.sign(vt[:k][np.arange(k), np.argmax(np.abs(vt[:k]), axis=1)])
    axes = vt[:k] * np.where(signs == 0, 1.0, signs)[:, None]
    return {"mean": mean.astype(np.float32), "components": axes.astype(np.float32)}


def content_version(directory: Path) -> str:
    """A short hash of what a package computes, for the model tag (16 hex characters).

    Every file's name and bytes count, except ``package.json``'s provenance keys
    (:data:`~cxr_triage.inference.layout.PROVENANCE_KEYS`: the tag itself, and the code, data
    and params versions it was built from): re-packaging the same weights, classifier,
    calibrator, threshold and reference after a commit gives the same tag.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        digest.update(rel.encode() + b"\0")
        if rel == PACKAGE_FILE:
            info = json.loads(path.read_text(encoding="utf-8"))
            kept = {k: v for k, v in info.items() if k not in PROVENANCE_KEYS}
            digest.update(json.dumps(kept, sort_keys=True).encode())
            continue
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def assemble_package(
    out: Path,
    *,
    sources: PackageSources,
    image_size: int,
    reference: ReferenceSet,
    summary_components: int,
    limits: ImageLimits,
    settings: RadiologistSettings,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a package folder for the pipeline's winner and return its ``package.json``.

    Args:
        out: the folder to fill (created; existing package files are replaced).
        sources: the pipeline's artifact folders.
        image_size: the training resolution.
        reference: the train and val images (manifest order): both fit the embedding summary,
            train fits the quality gate and val calibrates its limits, both are the
            similar-case reference set. Never test images.
        summary_components: principal components kept in the embedding summary.
        limits: the input guards every consumer of the package applies.
        settings: the quality gate's, explanations' and similar cases' settings.
        extra: more keys for ``package.json`` (metrics, versions).
    """
    from cxr_triage.evaluation.calibration import calibrator_from_dict
    from cxr_triage.inference.explain import choose_method
    from cxr_triage.inference.qc import QcSettings, fit_qc_model
    from cxr_triage.inference.similar import build_neighbours

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    winner = read_json(Path(sources.compare_dir) / "winner.json")
    operating = read_json(Path(sources.threshold_dir) / "threshold.json")
    if operating.get("candidate") != winner["candidate"]:
        raise DataError(
            f"threshold.json is for {operating.get('candidate')!r} but the winner is "
            f"{winner['candidate']!r}; run `dvc repro threshold`"
        )
    calibrator_from_dict(winner["calibrator"])  # refuse an unreadable calibrator now
    for member in winner.get("members") or []:
        calibrator_from_dict(member["calibrator"])
    kind, kind_info = _write_network(winner, sources, out, image_size)
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "candidate": winner["candidate"],
        "kind": kind,
        "image_size": image_size,
        "class_names": list(CLASS_NAMES),
        "threshold": float(operating["threshold"]),
        "operating_point": operating,
        "calibrator": winner["calibrator"],
        "winner_reason": winner.get("reason", ""),
        **kind_info,
        "limits": limits.to_dict(),
        **(extra or {}),
    }
    train, val = reference.rows("train"), reference.rows("val")
    images = np.asarray(reference.images)
    # The network's embeddings of development images fix the summary axes (never test).
    embeddings = embed_with_network(
        out / NETWORK_FILE, kind, images, has_logit=kind_info.get("network_logit")
    )
    np.savez(out / PROJECTION_FILE, **fit_projection(embeddings, summary_components))
    info["embedding_dim"] = int(embeddings.shape[1])
    info["summary_components"] = int(min(summary_components, embeddings.shape[1]))
    qc = settings.qc
    gate = fit_qc_model(
        images[train],
        images[val] if len(val) else images[train],
        grid=qc.grid,
        augment_copies=qc.augment_copies,
        calibration_quantile=qc.calibration_quantile,
        ood_quantile=qc.ood_quantile,
        ood_margin=qc.ood_margin,
        seed=settings.seed,
    )
    (out / QC_FILE).write_bytes(gate.to_bytes())
    info["qc"] = {
        "settings": QcSettings.from_params(qc).to_dict(),
        "limits": {
            "inverted": gate.inverted_limit,
            "rotated": gate.rotated_limit,
            "out_of_distribution": gate.ood_limit,
        },
        "grid": qc.grid,
    }
    similar = settings.similar
    info["similar"] = {
        "k": similar.k,
        "exact_max_rows": similar.exact_max_rows,
        **build_neighbours(
            out / NEIGHBOURS_FILE,
            embeddings=embeddings,
            images=images,
            manifest=reference.manifest,
            thumbnails=similar.thumbnails,
            thumbnail_size=similar.thumbnail_size,
        ),
    }
    explain = settings.explain
    method, reason = choose_method(info, explain.method)
    info["explain"] = {
        "method": method,
        "reason": reason,
        "occlusion_mask": explain.occlusion_mask,
        "occlusion_overlap": explain.occlusion_overlap,
    }
    write_json_atomically(out / PACKAGE_FILE, info)
    return info


def package_from_params(
    params: Any, out: Path, data: Any, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`assemble_package` for the pipeline configured by ``params`` (a ``Params``).

    Args:
        params: the pipeline's parameters (paths, image size, limits, summary size, qc,
            explain, similar).
        out: the package folder to fill.
        data: the pipeline's :class:`~cxr_triage.data.dataset.Dataset` (train and val images
            are used, never test).
        extra: more keys for ``package.json``.
    """
    paths = params.paths
    rows = data.development_rows()
    return assemble_package(
        out,
        sources=PackageSources(
            backbone_dir=Path(paths.backbone_dir),
            transfer_dir=Path(paths.transfer_dir),
            finetune_dir=Path(paths.finetune_dir),
            compare_dir=Path(paths.compare_dir),
            threshold_dir=Path(paths.threshold_dir),
        ),
        image_size=params.ingest.image_size,
        reference=ReferenceSet(
            np.asarray(data.pixels[rows]), data.manifest.loc[rows].reset_index(drop=True)
        ),
        summary_components=params.package.summary_components,
        limits=ImageLimits.from_params(params.ingest),
        settings=RadiologistSettings(
            qc=params.qc, explain=params.explain, similar=params.similar, seed=params.seed
        ),
        extra=extra,
    )


def finalise_package(out: Path) -> str:
    """Stamp ``package.json`` with the model tag (:func:`content_version`); return the tag."""
    info = read_json(Path(out) / PACKAGE_FILE)
    tag = f"{MODEL_NAME}:{content_version(out)}"
    info["model_tag"] = tag
    write_json_atomically(Path(out) / PACKAGE_FILE, info)
    return tag
