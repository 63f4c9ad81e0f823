"""The one inference core: a model package in, calibrated predictions and monitoring features out.

The ``evaluate`` and ``package`` stages, ``cxr-triage predict``, ``cxr-triage monitor`` and the
BentoML service all score through :class:`Predictor`, so decoding, preprocessing
(:func:`~cxr_triage.data.preprocess.prepare_image`, the function that made the training set),
the network, the recalibration and the threshold are written once.

Scoring is split in three steps so that a server can batch the middle one across requests:

1. :meth:`Predictor.prepare`: decode and preprocess one file (CPU, per request), and give it
   the input quality gate's verdict (:mod:`~cxr_triage.inference.qc`);
2. :meth:`Predictor.score`: the network and classifier on a batch of prepared images;
3. :meth:`Predictor.predictions`: threshold, label and monitoring features.

:meth:`Predictor.predict` does all three for a list of files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.data.deid import Pseudonymiser
from cxr_triage.data.preprocess import prepare_image, to_model_input
from cxr_triage.errors import DataError
from cxr_triage.inference.features import monitoring_rows
from cxr_triage.inference.layout import (
    CLASSIFIER_FILE,
    MEMBER_FILE,
    MODEL_CARD_FILE,
    NEIGHBOURS_FILE,
    NETWORK_FILE,
    PROJECTION_FILE,
    QC_FILE,
    read_package_info,
)
from cxr_triage.inference.qc import QcModel, QcSettings, QcVerdict, QualityGate
from cxr_triage.io.images import read_image
from cxr_triage.io.records import ImageLimits
from cxr_triage.vocabulary import NOT_FOR_CLINICAL_USE

__all__ = [
    "CALLER_METADATA",
    "Prediction",
    "PreparedImage",
    "Predictor",
    "Scores",
    "embed_with_network",
    "network_outputs",
]
# Metadata a caller may pass with an image (e.g. the site a PACS router knows); nothing else.
CALLER_METADATA = ("site", "view_position", "sex", "age", "manufacturer")
_SCORE_BATCH = 64


@dataclass(frozen=True)
class PreparedImage:
    """A decoded, preprocessed image, its PHI-free metadata and its quality-gate verdict.

    ``decoded`` is the full-resolution image (float32 in [0, 1], MONOCHROME2) only when
    :meth:`Predictor.prepare` was asked to keep it (to draw an explanation over it).
    """

    pixels: np.ndarray = field(repr=False)  # uint8 (S, S), the model's input representation
    metadata: dict[str, Any]
    qc: QcVerdict | None = None
    decoded: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Scores:
    """The network's output for a batch: calibrated probabilities and embedding summaries."""

    prob_abnormal: np.ndarray  # (N,) calibrated
    raw: np.ndarray  # (N,) before recalibration
    summary: np.ndarray  # (N, k + 1): projections on the package's axes, then the norm
    embeddings: np.ndarray | None = field(default=None, repr=False)  # (N, D), when computed


@dataclass(frozen=True)
class Prediction:
    """One image's result; ``features`` is its PHI-free monitoring row."""

    prob_abnormal: float
    label: str
    threshold: float
    model_tag: str
    features: dict[str, Any] = field(repr=False)
    qc: QcVerdict | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prob_abnormal": self.prob_abnormal,
            "label": self.label,
            "threshold": self.threshold,
            "model_tag": self.model_tag,
            "qc": self.qc.to_dict() if self.qc is not None else None,
            "disclaimer": NOT_FOR_CLINICAL_USE,
        }


def network_outputs(
    network: Any, images: np.ndarray, batch_size: int = _SCORE_BATCH
) -> list[np.ndarray]:
    """The package network's outputs for prepared ``uint8`` images ``(N, S, S)``, per batch.

    The one loop over a package network: scoring (:meth:`Predictor.score`) and package
    assembly (:func:`embed_with_network`) both go through it.
    """
    return [
        network.embed(to_model_input(np.asarray(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]


def embed_with_network(
    network: Path, kind: str, images: np.ndarray, *, has_logit: bool | None = None
) -> np.ndarray:
    """Embeddings ``(N, D)`` of prepared images from a package's ``network.onnx``.

    Args:
        network: the ONNX file.
        kind: ``finetuned`` (its last output column is the logit, dropped), ``transfer`` or
            ``ensemble``.
        images: prepared ``uint8`` images ``(N, S, S)``.
        has_logit: the last output column is a logit (default: ``kind == "finetuned"``).
    """
    from cxr_triage.models.weights import OnnxEmbedder

    out = np.concatenate(network_outputs(OnnxEmbedder(network), images))
    drop = kind == "finetuned" if has_logit is None else has_logit
    return out[:, :-1] if drop else out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


class Predictor:
    """Calibrated Normal/Abnormal predictions from a model package folder.

    Args:
        package_dir: a folder written by :func:`~cxr_triage.inference.package.assemble_package`.
        num_threads: onnxruntime threads (None: onnxruntime's default, all cores).
        model_tag: overrides the tag recorded in ``package.json`` (e.g. the model store's).

    Raises:
        DataError: the folder is not a complete package.
    """

    def __init__(
        self,
        package_dir: str | os.PathLike[str],
        *,
        num_threads: int | None = None,
        model_tag: str | None = None,
    ) -> None:
        from cxr_triage.evaluation.calibration import calibrator_from_dict
        from cxr_triage.models.weights import OnnxEmbedder

        self.package_dir = Path(package_dir)
        self.info: dict[str, Any] = read_package_info(self.package_dir)
        self.kind: str = self.info["kind"]
        self.image_size = int(self.info["image_size"])
        self.threshold = float(self.info["threshold"])
        self.class_names: tuple[str, str] = tuple(self.info["class_names"])  # type: ignore[assignment]
        self.model_tag: str = model_tag or self.info.get("model_tag", "unregistered")
        self.limits = ImageLimits.from_dict(self.info["limits"])
        self._calibrator = calibrator_from_dict(self.info["calibrator"])
        self._network = OnnxEmbedder(self.package_dir / NETWORK_FILE, num_threads=num_threads)
        self.classifier: Any = None  # the transfer winner's fitted candidate
        self._has_logit = self.kind == "finetuned" or bool(self.info.get("network_logit"))
        self._members: list[tuple[str, Any, Any]] = []  # (candidate, classifier or None, calib.)
        if self.kind == "transfer":
            from cxr_triage.models.transfer import load_candidate

            self.classifier = load_candidate(self.package_dir / CLASSIFIER_FILE)
        elif self.kind == "ensemble":
            from cxr_triage.models.transfer import load_candidate

            for member in self.info.get("members", []):
                name = member["candidate"]
                classifier = (
                    None
                    if member["kind"] == "finetuned"
                    else load_candidate(self.package_dir / MEMBER_FILE.format(name))
                )
                calibrator = calibrator_from_dict(member["calibrator"])
                self._members.append((name, classifier, calibrator))
        projection = np.load(self.package_dir / PROJECTION_FILE)
        self._mean = projection["mean"].astype(np.float32)
        self._axes = projection["components"].astype(np.float32)
        self.quality_gate = QualityGate(
            QcSettings.from_dict(self.info.get("qc", {}).get("settings", {})),
            QcModel.load(self.package_dir / QC_FILE),
        )
        self._similar: Any = None

    # -- the three steps -------------------------------------------------------------------

    def prepare(
        self,
        source: str | os.PathLike[str] | bytes,
        metadata: Mapping[str, Any] | None = None,
        *,
        pseudonymiser: Pseudonymiser | None = None,
        enforce_qc: bool = False,
        keep_decoded: bool = False,
    ) -> PreparedImage:
        """Decode a DICOM/PNG/JPEG (path or bytes), preprocess it as training did, and give it
        the quality gate's verdict.

        Args:
            source: the file or its bytes.
            metadata: caller-supplied values for :data:`CALLER_METADATA` keys (others ignored);
                they fill what the file does not say.
            pseudonymiser: when given, a DICOM's Study Instance UID is kept as its keyed digest
                (``metadata["study_key"]``), so radiologists' reads fed back by study can be
                matched to the prediction; the UID itself is never kept.
            enforce_qc: raise :class:`~cxr_triage.errors.QcFailedError` when a check that
                refuses fails (the service, ``cxr-triage predict``); else the verdict is only
                attached.
            keep_decoded: keep the full-resolution pixels (``PreparedImage.decoded``).

        Raises:
            InvalidImageError: the file is not a usable chest radiograph (the reason says why;
                ``QcFailedError`` when the gate refuses it and ``enforce_qc``).
        """
        decoded = read_image(source, self.limits)
        meta = decoded.meta
        known: dict[str, Any] = {
            "manufacturer": meta.manufacturer,
            "view_position": meta.view_position,
            "sex": meta.sex,
            "age": meta.age_years,
            "modality": meta.modality or meta.format.upper(),
            "photometric": meta.photometric,
            "orig_rows": meta.rows,
            "orig_cols": meta.cols,
            "bits_stored": meta.bits_stored,
            "format": meta.format,
            "burned_in_annotation": meta.burned_in_annotation,
        }
        for key in CALLER_METADATA:
            value = (metadata or {}).get(key)
            if value not in (None, "") and known.get(key) in (None, ""):
                known[key] = value
        study_uid = decoded.identifiers.study_uid
        if pseudonymiser is not None and study_uid:
            known["study_key"] = pseudonymiser.study(study_uid.strip())
        pixels = prepare_image(decoded.pixels, self.image_size)
        verdict = self.quality_gate.check(pixels, known)
        if enforce_qc and (refusal := verdict.error()) is not None:
            raise refusal
        return PreparedImage(pixels, known, verdict, decoded.pixels if keep_decoded else None)

    def score(self, images: np.ndarray, batch_size: int = _SCORE_BATCH) -> Scores:
        """Score prepared ``uint8`` images ``(N, S, S)``."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (self.image_size, self.image_size):
            raise DataError(
                f"expected prepared images of shape (N, {self.image_size}, {self.image_size}), "
                f"got {images.shape}"
            )
        outputs = network_outputs(self._network, images, batch_size)
        out = (
            np.concatenate(outputs)
            if outputs
            else np.zeros((0, int(self.info.get("embedding_dim", 0)) + self._has_logit))
        )
        embeddings, raw, prob = self._head(out)
        summary = np.concatenate(
            [
                (embeddings - self._mean) @ self._axes.T,
                np.linalg.norm(embeddings, axis=1, keepdims=True),
            ],
            axis=1,
        )
        return Scores(prob, raw, summary.astype(np.float64), embeddings)

    def _head(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network outputs to (embeddings, raw score, calibrated probability)."""
        if self.kind == "finetuned":
            embeddings, raw = out[:, :-1], _sigmoid(out[:, -1])
        elif self.kind == "ensemble":
            from cxr_triage.models.transfer import predict_scores

            embeddings = out[:, :-1] if self._has_logit else out
            parts = [
                calibrator.transform(
                    _sigmoid(out[:, -1])
                    if classifier is None
                    else np.asarray(predict_scores(classifier, embeddings), dtype=np.float64)
                )
                for _, classifier, calibrator in self._members
            ]
            raw = np.mean(parts, axis=0) if len(out) else np.zeros(0)
        else:
            from cxr_triage.models.transfer import predict_scores

            embeddings = out
            raw = predict_scores(self.classifier, embeddings) if len(out) else np.zeros(0)
        raw = np.asarray(raw, dtype=np.float64)
        prob = self._calibrator.transform(raw) if len(raw) else raw
        return embeddings, raw, np.asarray(prob, dtype=np.float64)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N,)`` from network outputs (what ``network.onnx``, or
        the package's torch network, gives)."""
        return self._head(np.asarray(outputs, dtype=np.float32))[2]

    def score_model_input(self, x: np.ndarray, batch_size: int = _SCORE_BATCH) -> np.ndarray:
        """Calibrated probabilities ``(N,)`` of normalised float32 inputs ``(N, 1, S, S)``
        (:func:`~cxr_triage.data.preprocess.to_model_input` of prepared images, or occluded
        copies of them): the same network, classifier and calibrator as :meth:`score`."""
        x = np.asarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.zeros(0)
        outputs = [
            self._network.embed(x[i : i + batch_size]) for i in range(0, len(x), batch_size)
        ]
        return self.probabilities(np.concatenate(outputs))

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Package-network embeddings ``(N, D)`` of prepared ``uint8`` images."""
        return self.score(images).embeddings  # type: ignore[return-value]

    @property
    def similar_cases(self) -> Any:
        """The package's reference set (:class:`~cxr_triage.inference.similar.SimilarCases`)."""
        if self._similar is None:
            from cxr_triage.inference.similar import SimilarCases

            settings = self.info.get("similar", {})
            self._similar = SimilarCases(
                self.package_dir / NEIGHBOURS_FILE,
                exact_max_rows=int(settings.get("exact_max_rows", 100_000)),
            )
        return self._similar

    def label_of(self, prob_abnormal: float) -> str:
        """``abnormal`` at or above the threshold, else ``normal``."""
        return self.class_names[1] if prob_abnormal >= self.threshold else self.class_names[0]

    def predictions(self, prepared: Sequence[PreparedImage], scores: Scores) -> list[Prediction]:
        """Labels at the threshold and monitoring features for scored images."""
        if not prepared:
            return []
        labels = [self.label_of(float(p)) for p in scores.prob_abnormal]
        rows = monitoring_rows(
            np.stack([p.pixels for p in prepared]),
            summary=scores.summary,
            prob_abnormal=scores.prob_abnormal,
            labels=labels,
            metadata=[p.metadata for p in prepared],
        )
        return [
            Prediction(
                prob_abnormal=float(prob),
                label=label,
                threshold=self.threshold,
                model_tag=self.model_tag,
                features=row,
                qc=p.qc,
            )
            for prob, label, row, p in zip(
                scores.prob_abnormal, labels, rows, prepared, strict=True
            )
        ]

    def predict(
        self,
        sources: Sequence[str | os.PathLike[str] | bytes],
        metadata: Mapping[str, Any] | None = None,
    ) -> list[Prediction]:
        """Decode, preprocess, score and label files; raises on the first unusable one."""
        prepared = [self.prepare(s, metadata) for s in sources]
        if not prepared:
            return []
        return self.predictions(prepared, self.score(np.stack([p.pixels for p in prepared])))

    def info_summary(self) -> dict[str, Any]:
        """What ``model_info`` reports: tag, candidate, threshold, operating point, metrics."""
        keys = ("candidate", "kind", "image_size", "class_names", "threshold", "operating_point")
        out = {k: self.info.get(k) for k in keys}
        out["explain"] = self.info.get("explain", {})
        out["qc"] = self.info.get("qc", {}).get("settings", {})
        card = self.package_dir / MODEL_CARD_FILE
        out["model_card"] = card.read_text(encoding="utf-8") if card.is_file() else None
        out.update(
            model_tag=self.model_tag,
            metrics=self.info.get("metrics", {}),
            versions=self.info.get("versions", {}),
            disclaimer=NOT_FOR_CLINICAL_USE,
        )
        return out
