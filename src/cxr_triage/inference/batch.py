"""Scoring files and folders with the :class:`Predictor`: the one loop for every batch consumer.

:func:`iter_scored` is that loop (``cxr-triage predict``, monitoring on an image folder, the
promotion gate's frozen set all go through it): files are decoded in a thread pool (pydicom's
codecs, numpy and PIL release the GIL) while the network scores full batches. A file that
cannot be used comes out as its refusal, in order, never as a stopped run or a missing row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxr_triage.atomic import atomic_path
from cxr_triage.data.sources import NON_IMAGE_SUFFIXES
from cxr_triage.errors import ConfigError, InvalidImageError, QcFailedError
from cxr_triage.inference.predictor import Prediction, Predictor, PreparedImage

__all__ = [
    "RESULT_COLUMNS",
    "CollectedFiles",
    "collect_files",
    "iter_scored",
    "score_files",
    "write_results",
]

log = logging.getLogger(__name__)

RESULT_COLUMNS = (
    "path",
    "status",
    "prob_abnormal",
    "label",
    "threshold",
    "model_tag",
    "reason",
    "message",
    "qc",
    "qc_failed",
)
OUTPUT_SUFFIXES = (".csv", ".parquet")


class CollectedFiles(NamedTuple):
    """The files to score, and the non-image files found beside them (counted, not scored)."""

    images: list[Path]
    non_images: list[Path]


def collect_files(paths: Iterable[str | os.PathLike[str]]) -> CollectedFiles:
    """Files named, and every non-hidden file below folders named, sorted per argument.

    Files below a folder whose suffix says they are not images (labels tables, notes:
    :data:`~cxr_triage.data.sources.NON_IMAGE_SUFFIXES`) are set apart in ``non_images``;
    every other file is an image to score (DICOM often has no extension), and a file named
    explicitly is always scored.

    Raises:
        ConfigError: a path does not exist.
    """
    images: list[Path] = []
    non_images: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            images.append(path)
        elif path.is_dir():
            for found in sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ):
                is_other = found.suffix.lower() in NON_IMAGE_SUFFIXES
                (non_images if is_other else images).append(found)
        else:
            raise ConfigError(f"{path} does not exist; pass image files or folders")
    return CollectedFiles(images, non_images)


def _prepare(
    predictor: Predictor, path: Path, metadata: Mapping[str, Any], enforce_qc: bool
) -> PreparedImage | InvalidImageError:
    try:
        return predictor.prepare(path, metadata, enforce_qc=enforce_qc)
    except InvalidImageError as exc:
        return exc


def iter_scored(
    predictor: Predictor,
    files: Sequence[Path],
    *,
    metadata: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    enforce_qc: bool = False,
) -> Iterator[tuple[Path, Prediction | InvalidImageError]]:
    """Score files in batches; yield ``(file, prediction or refusal)`` in the given order.

    Args:
        predictor: the model.
        files: image files (DICOM, PNG, JPEG).
        metadata: caller metadata for every file (e.g. ``{"site": ...}``).
        batch_size: images per network call.
        workers: decoding threads (None: the number of cores).
        enforce_qc: a file the input quality gate refuses is yielded as its
            :class:`~cxr_triage.errors.QcFailedError` (as the service answers 422); else every
            prediction only carries its verdict (``Prediction.qc``).

    Raises:
        ConfigError: ``batch_size`` below 1.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    metadata = dict(metadata or {})
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            outcomes = list(
                pool.map(lambda p: _prepare(predictor, p, metadata, enforce_qc), chunk)
            )
            prepared = [o for o in outcomes if isinstance(o, PreparedImage)]
            predictions = iter(
                predictor.predictions(
                    prepared, predictor.score(np.stack([p.pixels for p in prepared]))
                )
                if prepared
                else []
            )
            for path, outcome in zip(chunk, outcomes, strict=True):
                yield (
                    path,
                    outcome if isinstance(outcome, InvalidImageError) else next(predictions),
                )


def score_files(
    predictor: Predictor,
    files: Sequence[Path],
    *,
    site: str | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    features: bool = False,
    progress: bool = True,
    enforce_qc: bool = False,
) -> pd.DataFrame:
    """Score files; one row per file, in the given order.

    Args:
        predictor: the model.
        files: image files (DICOM, PNG, JPEG).
        site: the site the images come from, recorded with the features.
        batch_size: images per network call.
        workers: decoding threads (None: the number of cores).
        features: add the monitoring feature columns (image statistics, metadata, embedding
            summary) to the result.
        progress: show a progress bar.
        enforce_qc: files the input quality gate refuses get ``status`` ``refused`` (reason
            ``qc_failed``) and no probability; else they are scored and ``qc`` says ``refuse``.

    Returns:
        :data:`RESULT_COLUMNS` (+ features): ``status`` is ``ok``, ``unreadable`` or
        ``refused`` (then ``reason`` and ``message`` say why); ``qc`` is the quality gate's
        status (``pass``, ``warn``, ``refuse``) and ``qc_failed`` the checks that failed.
    """
    rows: list[dict[str, Any]] = []
    scored = iter_scored(
        predictor,
        files,
        metadata={"site": site} if site else None,
        batch_size=batch_size,
        workers=workers,
        enforce_qc=enforce_qc,
    )
    for path, outcome in tqdm(
        scored, total=len(files), desc="predict", unit="img", disable=not progress
    ):
        if isinstance(outcome, InvalidImageError):
            rows.append(
                {
                    "path": str(path),
                    "status": "refused" if isinstance(outcome, QcFailedError) else "unreadable",
                    "reason": outcome.reason,
                    "message": str(outcome),
                    **(
                        {"qc": "refuse", "qc_failed": ",".join(outcome.checks)}
                        if isinstance(outcome, QcFailedError)
                        else {}
                    ),
                }
            )
            continue
        row = {"path": str(path), "status": "ok", **outcome.to_dict()}
        row.pop("disclaimer")
        verdict = row.pop("qc")
        row["qc"] = verdict["status"] if verdict else None
        row["qc_failed"] = ",".join(verdict["failed"]) if verdict else None
        if features:
            row.update({k: v for k, v in outcome.features.items() if k not in row})
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in RESULT_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    ordered = list(RESULT_COLUMNS) + [c for c in frame.columns if c not in RESULT_COLUMNS]
    return frame[ordered]


def write_results(frame: pd.DataFrame, out: Path) -> None:
    """Write results to ``.csv`` or ``.parquet`` atomically (no half-written file).

    Raises:
        ConfigError: another suffix.
    """
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(
            f"cannot write {out.name}: use a {' or '.join(OUTPUT_SUFFIXES)} file name"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
