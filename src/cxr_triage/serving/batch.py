"""Batch scoring of files and folders with the :class:`Predictor` (``cxr-triage predict``).

Files are decoded in a thread pool (pydicom's codecs, numpy and PIL release the GIL) while the
network scores full batches. A file that cannot be used is a result row with its reason, never
a stopped run or a silently missing row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxr_triage.atomic import atomic_path
from cxr_triage.errors import ConfigError, InvalidImageError
from cxr_triage.serving.predictor import Predictor, PreparedImage

__all__ = ["RESULT_COLUMNS", "collect_files", "score_files", "write_results"]

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
)
OUTPUT_SUFFIXES = (".csv", ".parquet")


def collect_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named, and every non-hidden file below folders named, sorted per argument.

    Raises:
        ConfigError: a path does not exist.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            )
        else:
            raise ConfigError(f"{path} does not exist; pass image files or folders")
    return files


def _prepare(
    predictor: Predictor, path: Path, metadata: dict[str, Any]
) -> PreparedImage | InvalidImageError:
    try:
        return predictor.prepare(path, metadata)
    except InvalidImageError as exc:
        return exc


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_files(
    predictor: Predictor,
    files: Sequence[Path],
    *,
    site: str | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    features: bool = False,
    progress: bool = True,
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

    Returns:
        :data:`RESULT_COLUMNS` (+ features): ``status`` is ``ok`` or ``unreadable`` (then
        ``reason`` and ``message`` say why).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    metadata = {"site": site} if site else {}
    rows: list[dict[str, Any]] = []
    with (
        ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool,
        tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar,
    ):
        for chunk in _batches(files, batch_size):
            outcomes = list(pool.map(lambda p: _prepare(predictor, p, metadata), chunk))
            prepared = [o for o in outcomes if isinstance(o, PreparedImage)]
            predictions = iter(
                predictor.predictions(
                    prepared, predictor.score(np.stack([p.pixels for p in prepared]))
                )
                if prepared
                else []
            )
            for path, outcome in zip(chunk, outcomes, strict=True):
                if isinstance(outcome, InvalidImageError):
                    rows.append(
                        {
                            "path": str(path),
                            "status": "unreadable",
                            "reason": outcome.reason,
                            "message": str(outcome),
                        }
                    )
                    continue
                prediction = next(predictions)
                row = {"path": str(path), "status": "ok", **prediction.to_dict()}
                row.pop("disclaimer")
                if features:
                    row.update({k: v for k, v in prediction.features.items() if k not in row})
                rows.append(row)
            bar.update(len(chunk))
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
