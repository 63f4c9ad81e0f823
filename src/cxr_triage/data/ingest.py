"""Ingest: candidate files -> canonical dataset (manifest + pixels at training size) + rejects.

Outputs, all written into a temporary sibling folder and moved into place at the end, so a killed
run leaves the previous output (or nothing), never a half-written one:

- ``manifest.csv``: one row per accepted image (see :data:`MANIFEST_COLUMNS`); identifiers are
  pseudonymised, no names, dates, accession numbers or raw IDs;
- ``pixels.npy``: ``uint8`` array ``(N, S, S)``, row ``i`` is manifest row ``i``;
- ``rejects.csv``: one row per refused file: relative path, reason code, message;
- ``counts.json``: totals, per reason, per label and per site.

Files are decoded in a process pool over all cores. Raw identifiers are hashed inside the worker,
so they never cross into the parent process, the logs or the outputs.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxr_triage.atomic import atomic_dir
from cxr_triage.data.deid import Pseudonymiser, salt_from_env
from cxr_triage.data.preprocess import prepare_image
from cxr_triage.data.sources import Discovery, SourceItem, discover
from cxr_triage.errors import InvalidImageError
from cxr_triage.io.images import read_image
from cxr_triage.io.records import DecodedImage, ImageLimits
from cxr_triage.vocabulary import FINDING_COLUMNS, LABELS

__all__ = [
    "MANIFEST_COLUMNS",
    "IngestSummary",
    "Reject",
    "Row",
    "content_key",
    "ingest",
    "ingest_source",
    "read_item",
]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "row",
    "image_id",
    "patient_id",
    "study_id",
    "sex",
    "age",
    "view_position",
    "site",
    "manufacturer",
    *FINDING_COLUMNS,
    "label",
    "official_split",
    "format",
    "modality",
    "photometric",
    "bits_stored",
    "orig_rows",
    "orig_cols",
    "burned_in_annotation",
)
REJECT_COLUMNS = ("source_path", "reason", "message")


@dataclass(frozen=True)
class IngestSummary:
    n_candidates: int
    n_ingested: int
    n_rejected: int
    counts: dict[str, object]


# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Worker state, set once per process by the pool initialiser (fork keeps it cheap).
_WORKER: dict[str, object] = {}


def _init_worker(salt: str, image_size: int, limits: ImageLimits) -> None:
    _WORKER.update(pseudo=Pseudonymiser(salt), size=image_size, limits=limits)
    _keep_freed_buffers()


def _keep_freed_buffers() -> None:
    """Let glibc reuse freed large buffers instead of unmapping them after every image.

    Each radiograph allocates several 8-16 MiB arrays (file bytes, decoded pixels, float32 copy,
    PIL image). By default glibc maps each afresh and unmaps it when freed, so every image pays
    thousands of page faults: measured 4,900 faults and 43 ms CPU per 2048x2048 image, against
    440 faults and 26 ms with these settings (+60% ingest throughput), for ~50 MiB of retained
    heap per worker. Called where images are decoded: in each pool worker, or in-process when
    ingest runs with a single worker.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):  # not glibc: keep the platform's allocator as it is
        pass


@dataclass(frozen=True)
class Row:
    """One accepted file: its decoded image and its manifest fields (pseudonymised, no PHI).

    ``fields`` holds every :data:`MANIFEST_COLUMNS` column but ``row``, plus
    ``_no_patient_id`` (the file named no patient: it is its own patient).
    """

    image: DecodedImage
    fields: dict[str, object]

    @property
    def image_id(self) -> str:
        return str(self.fields["image_id"])


@dataclass(frozen=True)
class Reject:
    """One refused file: its path relative to the source, a reason code and a message."""

    source_path: str
    reason: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"source_path": self.source_path, "reason": self.reason, "message": self.message}


def content_key(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes: the identity of an image without a SOP Instance UID."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def read_item(
    item: SourceItem,
    *,
    pseudonymiser: Pseudonymiser,
    limits: ImageLimits,
    require_label: bool = False,
) -> Row | Reject:
    """Read, check and pseudonymise one discovered file: the one implementation every ingest uses.

    The ``ingest`` stage, ``cxr-triage ingest``, the ingestion flow (``data/raw``) and the
    promotion gate's frozen set all go through it, so an image gets the same ``image_id``
    whichever of them reads it: the keyed digest of its DICOM SOP Instance UID, else of its
    content (:func:`content_key`), never of its path.

    Args:
        item: the file and its label row (:func:`~cxr_triage.data.sources.discover`).
        pseudonymiser: the keyed hash for identifiers (``CXR_TRIAGE_SALT``).
        limits: the image guards.
        require_label: refuse a file whose label row gives no normal/abnormal label.

    Returns:
        The accepted image with its manifest fields, or why it was refused. Any failure of this
        one file is a :class:`Reject`; nothing raises for a bad file.
    """
    labels = item.labels
    if require_label and labels.get("label", "") not in LABELS:
        return Reject(
            item.rel_path,
            "no_label",
            "the labels table gives no label for this image; fill label (normal/abnormal) or "
            "finding",
        )
    try:
        image = read_image(item.path, limits)
        image_key = image.identifiers.sop_instance_uid or content_key(item.path)
    except InvalidImageError as exc:
        return Reject(item.rel_path, exc.reason, str(exc))
    except (OSError, MemoryError) as exc:
        return Reject(item.rel_path, "read_error", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop the others
        log.warning("unexpected failure reading %s", item.rel_path, exc_info=True)
        return Reject(
            item.rel_path,
            "unreadable",
            f"the file could not be read ({type(exc).__name__}: {exc}); re-export it, and "
            "report this file to the maintainers",
        )
    meta, ids = image.meta, image.identifiers
    raw_patient = str(labels.get("patient_id") or ids.patient_id or "")
    raw_study = str(labels.get("study_id") or ids.study_uid or "")
    age = labels.get("age")
    if age is None or (isinstance(age, float) and math.isnan(age)):
        age = meta.age_years
    image_id = pseudonymiser.image(image_key)
    fields: dict[str, object] = {
        "image_id": image_id,
        # An image with no patient identity is its own patient: the split stays patient-safe.
        "patient_id": pseudonymiser.patient(raw_patient) if raw_patient else f"img-{image_id}",
        "study_id": pseudonymiser.study(raw_study) if raw_study else f"img-{image_id}",
        "sex": labels.get("sex") or meta.sex,
        "age": age,
        "view_position": labels.get("view_position") or meta.view_position,
        "site": item.site,
        "manufacturer": meta.manufacturer,
        **{c: int(labels.get(c, 0) or 0) for c in FINDING_COLUMNS},
        "label": labels.get("label", ""),
        "official_split": labels.get("official_split", ""),
        "format": meta.format,
        "modality": meta.modality,
        "photometric": meta.photometric,
        "bits_stored": meta.bits_stored,
        "orig_rows": meta.rows,
        "orig_cols": meta.cols,
        "burned_in_annotation": meta.burned_in_annotation,
        "_no_patient_id": not raw_patient,
    }
    return Row(image, fields)


def _process(item: SourceItem) -> tuple[np.ndarray | None, dict[str, object]]:
    """Pool worker: :func:`read_item`, then the training representation; (None, reject) if not.

    Only the small prepared image crosses back to the parent process, never the full-size
    pixels or a raw identifier.
    """
    outcome = read_item(
        item,
        pseudonymiser=_WORKER["pseudo"],  # type: ignore[arg-type]
        limits=_WORKER["limits"],  # type: ignore[arg-type]
    )
    if isinstance(outcome, Reject):
        return None, outcome.to_dict()
    return prepare_image(outcome.image.pixels, _WORKER["size"]), outcome.fields  # type: ignore[arg-type]


def ingest_source(
    source: str,
    source_dir: Path,
    out_dir: Path,
    *,
    labels_csv: str | None = None,
    site: str | None = None,
    image_size: int,
    limits: ImageLimits = ImageLimits(),
    workers: int = 0,
) -> IngestSummary:
    """Discover a source's files and ingest them (what the stage and ``cxr-triage ingest`` run).

    Real identifiers are pseudonymised with ``$CXR_TRIAGE_SALT``
    (:func:`cxr_triage.data.deid.salt_from_env`); see :func:`discover` and :func:`ingest`.
    """
    discovery = discover(source, Path(source_dir), labels_csv, site)
    salt = salt_from_env(synthetic=source == "synthetic")
    return ingest(
        discovery, Path(out_dir), image_size=image_size, salt=salt, limits=limits, workers=workers
    )


def ingest(
    discovery: Discovery,
    out_dir: Path,
    *,
    image_size: int,
    salt: str,
    limits: ImageLimits = ImageLimits(),
    workers: int = 0,
    progress: bool | None = None,
) -> IngestSummary:
    """Read every discovered file and write the canonical dataset to ``out_dir`` atomically.

    Args:
        discovery: files and label rows from :func:`cxr_triage.data.sources.discover`.
        out_dir: output folder (replaced as a whole on success).
        image_size: side of the square training representation.
        salt: pseudonymisation key (:func:`cxr_triage.data.deid.salt_from_env`).
        limits: image guards.
        workers: processes; 0 = all cores.
        progress: show a progress bar (None = only on a terminal).

    Returns:
        Counts of candidates, accepted and rejected files.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    items = discovery.items
    n = len(items)
    workers = workers or os.cpu_count() or 1
    with atomic_dir(out_dir) as tmp_dir:
        rows, rejects = [], list(discovery.rejects)
        pixels = np.lib.format.open_memmap(
            tmp_dir / "pixels.partial.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(max(n, 1), image_size, image_size),
        )
        seen: set[str] = set()
        initargs = (salt, image_size, limits)
        chunksize = max(1, min(16, n // (workers * 8) or 1))
        with _pool(workers, initargs) as pool:
            results = (
                pool.imap(_process, items, chunksize=chunksize) if pool else map(_process, items)
            )
            for item, (array, fields) in tqdm(
                zip(items, results, strict=True),
                total=n,
                desc="ingest",
                unit="img",
                disable=progress is False if progress is not None else None,
            ):
                if array is None:
                    rejects.append(fields)
                elif fields["image_id"] in seen:
                    rejects.append(
                        {
                            "source_path": item.rel_path,
                            "reason": "duplicate",
                            "message": "the same image (SOP Instance UID or content) was "
                            "already ingested; remove the copy",
                        }
                    )
                else:
                    seen.add(str(fields["image_id"]))
                    pixels[len(rows)] = array
                    rows.append(fields)
        counts = _write_outputs(tmp_dir, pixels, rows, rejects, discovery, n)
    log.info(
        "ingest: %d of %d files accepted, %d rejected (%s)",
        counts["n_ingested"],
        n,
        counts["n_rejected"],
        counts["rejected_by_reason"] or "none",
    )
    return IngestSummary(n, counts["n_ingested"], counts["n_rejected"], counts)


class _pool:
    """A fork process pool, or nothing for one worker (keeps tracebacks simple, no fork cost)."""

    def __init__(self, workers: int, initargs: tuple) -> None:
        self.workers, self.initargs, self.pool = workers, initargs, None

    def __enter__(self):  # noqa: ANN204
        if self.workers <= 1:
            _init_worker(*self.initargs)
            return None
        self.pool = mp.get_context("fork").Pool(self.workers, _init_worker, self.initargs)
        return self.pool

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()


def _write_outputs(
    tmp_dir: Path,
    pixels: np.ndarray,
    rows: list[dict],
    rejects: list[dict],
    discovery: Discovery,
    n_candidates: int,
) -> dict[str, object]:
    n_ok = len(rows)
    pixels.flush()
    final = np.lib.format.open_memmap(
        tmp_dir / "pixels.npy", mode="w+", dtype=np.uint8, shape=(n_ok, *pixels.shape[1:])
    )
    for start in range(0, n_ok, 1024):  # chunked copy: bounded memory for large datasets
        final[start : start + 1024] = pixels[start : min(n_ok, start + 1024)]
    final.flush()
    del final
    (tmp_dir / "pixels.partial.npy").unlink()
    manifest = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS[1:], "_no_patient_id"])
    no_patient = int(manifest.pop("_no_patient_id").sum()) if n_ok else 0
    manifest.insert(0, "row", range(n_ok))
    manifest.to_csv(tmp_dir / "manifest.csv", index=False)
    rejects_df = pd.DataFrame(rejects, columns=list(REJECT_COLUMNS))
    rejects_df.to_csv(tmp_dir / "rejects.csv", index=False)
    counts = {
        "n_candidates": n_candidates,
        "n_ingested": n_ok,
        "n_rejected": len(rejects),
        "rejected_by_reason": dict(Counter(rejects_df["reason"]).most_common()),
        "ignored_non_image_files": discovery.ignored_files,
        "images_without_patient_id": no_patient,
        "by_label": {k: int(v) for k, v in manifest["label"].value_counts().items()}
        if n_ok
        else {},
        "by_site": {k: int(v) for k, v in manifest["site"].value_counts().items()} if n_ok else {},
        "image_size": int(pixels.shape[1]),
    }
    (tmp_dir / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts
