"""Similar past cases: the labelled reference images nearest to an image in the package's
embedding space.

The reference set is the package's train and val images (never test), stored in the package as
``neighbours.npz`` (:func:`build_neighbours`): pseudonymous ``image_id`` only (the keyed digest
ingest gave each image), split, label, the 14 finding flags, the embedding and, unless switched
off, a small thumbnail of the training representation. Images whose DICOM header flags
burned-in annotation (text in the pixels that may identify the patient) never get one.

Metric: cosine similarity of *standardised* embeddings (each dimension centred and scaled by the
train images' mean and standard deviation, then L2-normalised). Raw network features are
non-negative and share a large common component, so raw cosines all sit near 1; standardising
first makes them spread over [-1, 1]. ``distance`` is ``1 - cosine``.

Search: exact (one matrix product, numpy) up to ``similar.exact_max_rows`` reference images,
else a FAISS HNSW index (inner product on the normalised vectors, M=32, efSearch=128).
``benchmarks/bench_similar.py`` measures both at 10k and 1M vectors and the index's recall@10.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.errors import DataError
from cxr_triage.vocabulary import FINDINGS

__all__ = [
    "ExactIndex",
    "HnswIndex",
    "SimilarCase",
    "SimilarCases",
    "SimilarResult",
    "build_index",
    "build_neighbours",
    "similar_to_source",
    "standardise",
]

log = logging.getLogger(__name__)


def standardise(embeddings: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Centred, scaled and L2-normalised float32 rows (the space cosine is taken in)."""
    x = (np.asarray(embeddings, dtype=np.float32) - mean) / scale
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class ExactIndex:
    """Exact inner-product search over normalised rows (a matrix product)."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, indices)``, each ``(Q, k)``, best first."""
        sims = np.asarray(queries, dtype=np.float32) @ self.vectors.T
        k = min(k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)


class HnswIndex:
    """Approximate inner-product search with FAISS's HNSW graph (``IndexHNSWFlat``).

    Args:
        vectors: normalised rows.
        m: graph neighbours per node.
        ef_search: candidates explored per query (recall against speed).
        ef_construction: candidates explored while building.
    """

    kind = "hnsw"

    def __init__(
        self, vectors: np.ndarray, *, m: int = 32, ef_search: int = 128, ef_construction: int = 80
    ) -> None:
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, idx = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return sims, idx


def build_index(vectors: np.ndarray, exact_max_rows: int) -> ExactIndex | HnswIndex:
    """Exact search up to ``exact_max_rows`` rows, else HNSW."""
    if len(vectors) <= exact_max_rows:
        return ExactIndex(vectors)
    return HnswIndex(vectors)


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(
        Image.fromarray(np.asarray(image, dtype=np.uint8)).resize(
            (size, size), Image.Resampling.BOX
        )
    )


def build_neighbours(
    out: Path,
    *,
    embeddings: np.ndarray,
    images: np.ndarray,
    manifest: Any,
    thumbnails: bool,
    thumbnail_size: int,
) -> dict[str, Any]:
    """Write ``neighbours.npz``: the reference set of similar-case search.

    Args:
        out: the file to write.
        embeddings: ``(N, D)`` package-network embeddings of the reference images.
        images: ``uint8 (N, S, S)`` their prepared images (for thumbnails).
        manifest: their manifest rows (a DataFrame with ``image_id``, ``split``, ``label``,
            the finding columns and, optionally, ``burned_in_annotation``).
        thumbnails: store thumbnails at all.
        thumbnail_size: thumbnail side.

    Returns:
        What was stored (counts), for ``package.json``.
    """
    from cxr_triage.vocabulary import FINDING_COLUMNS

    embeddings = np.asarray(embeddings, dtype=np.float32)
    n = len(embeddings)
    if n < 2:
        raise DataError("similar cases need at least 2 reference images")
    mean = embeddings.mean(axis=0)
    scale = embeddings.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
    burned = (
        manifest["burned_in_annotation"].astype(str).str.upper().eq("YES").to_numpy()
        if "burned_in_annotation" in manifest
        else np.zeros(n, dtype=bool)
    )
    has_thumb = np.full(n, bool(thumbnails)) & ~burned
    thumbs = np.zeros((n, thumbnail_size, thumbnail_size), dtype=np.uint8)
    for i in np.flatnonzero(has_thumb):
        thumbs[i] = _thumbnail(images[i], thumbnail_size)
    np.savez_compressed(
        out,
        vectors=standardise(embeddings, mean, scale),
        mean=mean.astype(np.float32),
        scale=scale,
        image_id=np.asarray(manifest["image_id"].astype(str).to_numpy(), dtype=str),
        split=np.asarray(manifest["split"].astype(str).to_numpy(), dtype=str),
        label=np.asarray(manifest["label"].astype(str).to_numpy(), dtype=str),
        findings=manifest[list(FINDING_COLUMNS)].to_numpy(dtype=np.uint8),
        thumbnails=thumbs if thumbnails else np.zeros((n, 0, 0), dtype=np.uint8),
        has_thumbnail=has_thumb,
    )
    return {
        "n_reference": int(n),
        "n_thumbnails": int(has_thumb.sum()),
        "n_burned_in_annotation": int(burned.sum()),
        "metric": "cosine of standardised embeddings",
    }


@dataclass(frozen=True)
class SimilarCase:
    """One reference image near the query (pseudonymous: no identifier of the patient)."""

    rank: int
    image_id: str
    split: str
    label: str
    findings: tuple[str, ...]
    similarity: float
    distance: float
    thumbnail: np.ndarray | None

    def to_dict(self, *, thumbnails: bool = True) -> dict[str, Any]:
        """JSON-safe; the thumbnail as a ``data:image/png;base64,...`` URL (or None)."""
        url = None
        if thumbnails and self.thumbnail is not None:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(self.thumbnail).save(buffer, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return {
            "rank": self.rank,
            "image_id": self.image_id,
            "split": self.split,
            "label": self.label,
            "findings": list(self.findings),
            "similarity": round(self.similarity, 4),
            "distance": round(self.distance, 4),
            "thumbnail": url,
        }


class SimilarCases:
    """Nearest labelled reference images of a package (``neighbours.npz``).

    Args:
        path: the ``neighbours.npz`` file.
        exact_max_rows: exact search up to this many references, HNSW past it.

    Raises:
        DataError: unreadable file.
    """

    def __init__(self, path: str | Path, *, exact_max_rows: int = 100_000) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {key: z[key] for key in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable neighbours file ({exc})") from exc
        self.vectors = data["vectors"]
        self.mean, self.scale = data["mean"], data["scale"]
        self.image_id, self.split = data["image_id"], data["split"]
        self.label, self.findings = data["label"], data["findings"]
        self.thumbnails, self.has_thumbnail = data["thumbnails"], data["has_thumbnail"]
        self.index = build_index(self.vectors, exact_max_rows)

    def __len__(self) -> int:
        return len(self.vectors)

    def search(
        self, embeddings: np.ndarray, k: int, *, exclude: Sequence[str] = ()
    ) -> list[list[SimilarCase]]:
        """The ``k`` nearest references of each embedding ``(Q, D)``, best first.

        Args:
            embeddings: raw package-network embeddings of the queries.
            k: neighbours per query.
            exclude: image ids never returned (a reference image queried as itself).
        """
        queries = standardise(np.atleast_2d(embeddings), self.mean, self.scale)
        excluded = set(exclude)
        extra = len(excluded) if excluded else 0
        sims, idx = self.index.search(queries, min(len(self), k + extra))
        results: list[list[SimilarCase]] = []
        for row_sims, row_idx in zip(sims, idx, strict=True):
            cases: list[SimilarCase] = []
            for sim, i in zip(row_sims, row_idx, strict=True):
                if i < 0 or str(self.image_id[i]) in excluded:
                    continue
                flags = self.findings[i]
                cases.append(
                    SimilarCase(
                        rank=len(cases) + 1,
                        image_id=str(self.image_id[i]),
                        split=str(self.split[i]),
                        label=str(self.label[i]),
                        findings=tuple(f for f, on in zip(FINDINGS, flags, strict=True) if on),
                        similarity=float(sim),
                        distance=float(1.0 - sim),
                        thumbnail=self.thumbnails[i] if self.has_thumbnail[i] else None,
                    )
                )
                if len(cases) == k:
                    break
            results.append(cases)
        return results

    def vote(self, embeddings: np.ndarray, k: int) -> np.ndarray:
        """The share of abnormal references among the ``k`` nearest, per query (a kNN score)."""
        from cxr_triage.vocabulary import ABNORMAL

        queries = standardise(np.atleast_2d(embeddings), self.mean, self.scale)
        _, idx = self.index.search(queries, min(len(self), k))
        return (self.label[idx] == ABNORMAL).mean(axis=1)


@dataclass(frozen=True)
class SimilarResult:
    """One file's prediction and its nearest reference cases (what ``/similar`` and
    ``cxr-triage similar`` answer)."""

    prediction: Any  # cxr_triage.inference.predictor.Prediction
    cases: list[SimilarCase]
    n_reference: int
    metric: str

    def to_dict(self, *, thumbnails: bool = True) -> dict[str, Any]:
        from cxr_triage.vocabulary import NOT_FOR_CLINICAL_USE

        return {
            "prob_abnormal": self.prediction.prob_abnormal,
            "label": self.prediction.label,
            "model_tag": self.prediction.model_tag,
            "qc": self.prediction.qc.to_dict() if self.prediction.qc is not None else None,
            "metric": self.metric,
            "n_reference": self.n_reference,
            "cases": [c.to_dict(thumbnails=thumbnails) for c in self.cases],
            "disclaimer": NOT_FOR_CLINICAL_USE,
        }


def similar_to_source(
    predictor: Any,
    source: str | Path | bytes,
    metadata: dict[str, Any] | None = None,
    *,
    k: int | None = None,
    enforce_qc: bool = True,
) -> SimilarResult:
    """Decode, gate and score one file, and find its ``k`` nearest reference cases.

    Args:
        predictor: the package's :class:`~cxr_triage.inference.predictor.Predictor`.
        source: a DICOM/PNG/JPEG file or its bytes.
        metadata: caller metadata.
        k: how many (default: the package's ``similar.k``); 1 to 100.
        enforce_qc: raise the quality gate's refusal (as ``/predict`` does).

    Raises:
        ConfigError: ``k`` outside 1..100.
        InvalidImageError: the reader or the quality gate refuses the file.
    """
    from cxr_triage.errors import ConfigError

    settings = predictor.info.get("similar", {})
    k = int(settings.get("k", 5) if k is None else k)
    if not 1 <= k <= 100:
        raise ConfigError(f"k must be between 1 and 100, got {k}")
    prepared = predictor.prepare(source, metadata, enforce_qc=enforce_qc)
    scores = predictor.score(prepared.pixels[None])
    (prediction,) = predictor.predictions([prepared], scores)
    reference = predictor.similar_cases
    cases = reference.search(scores.embeddings, k)[0]
    if not settings.get("thumbnails", True):
        cases = [dataclasses.replace(c, thumbnail=None) for c in cases]
    metric = str(settings.get("metric", "cosine of standardised embeddings"))
    return SimilarResult(prediction, cases, len(reference), metric)
