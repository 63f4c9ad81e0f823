"""New images -> the DVC-tracked raw data: validated, de-identified, accumulated, versioned.

An incoming batch uses the ``folder`` source layout (README "Running on real data"): PNG, JPEG or
DICOM files anywhere below the folder plus ``labels.csv`` (columns ``image`` and ``label`` or
``finding``; optional ``patient_id``, ``study_id``, ``sex``, ``age``, ``view_position``,
``site``). Each file is read and checked by :func:`cxr_triage.io.images.read_image` (modality,
codec, truncation, size...), the same reader the ``ingest`` stage and the service use, and its
identifiers are pseudonymised with the ingest key (:mod:`cxr_triage.data.deid`).

The raw data folder (``data/raw``) is itself a ``folder`` source, so
``ingest.source=folder ingest.source_dir=data/raw`` trains on it::

    data/raw/
      images/<image_id>.png   de-identified 16-bit grey PNG (display pixels of the original:
                              modality/VOI LUT applied, MONOCHROME1 inverted; no header, no PHI)
      labels.csv              one row per image: image, label, finding, patient_id, study_id
                              (pseudonyms), sex, age, view_position, site, batch, ingested_at

``<image_id>`` is the keyed digest of the DICOM SOP Instance UID (else of the file's content), as
the ``ingest`` stage computes it (:func:`cxr_triage.data.ingest.read_item`), so the same image
sent twice is refused as a duplicate. ``dvc add data/raw`` then records the new
data version in ``data/raw.dvc``. Every refused file is listed with its reason, never dropped.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.atomic import atomic_path
from cxr_triage.data.deid import Pseudonymiser
from cxr_triage.data.ingest import Reject, Row, read_item
from cxr_triage.data.sources import Discovery, discover
from cxr_triage.errors import DataError
from cxr_triage.io.records import ImageLimits
from cxr_triage.vocabulary import FINDING_COLUMNS, FINDINGS, NO_FINDING, NORMAL

__all__ = [
    "RAW_COLUMNS",
    "RawBatchResult",
    "add_batch_to_raw",
    "dvc_add",
    "git_commit",
    "move_to_processed",
]

log = logging.getLogger(__name__)

RAW_LABELS = "labels.csv"
RAW_IMAGES = "images"
RAW_COLUMNS = (
    "image",
    "label",
    "finding",
    "patient_id",
    "study_id",
    "sex",
    "age",
    "view_position",
    "site",
    "batch",
    "ingested_at",
)
_FINDING_NAME = dict(zip(FINDING_COLUMNS, FINDINGS, strict=True))


@dataclass
class RawBatchResult:
    """What happened to one incoming batch.

    Attributes:
        batch_id: name of the batch (also the folder under ``processed/``).
        n_candidates: files considered (images and label rows without a file).
        accepted: one entry per added image: ``image`` (raw folder path), ``label``, ``site``.
        rejected: one entry per refused file: ``source_path``, ``reason``, ``message``.
        n_raw_images: images in the raw folder after the batch.
        ignored_files: non-image files in the batch (besides the labels table).
        data_version: md5 of the raw folder recorded by ``dvc add`` (set by the flow).
    """

    batch_id: str
    n_candidates: int
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    n_raw_images: int = 0
    ignored_files: int = 0
    data_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        """A report for people: counts, reasons, and every refused file."""
        reasons = pd.Series([r["reason"] for r in self.rejected], dtype=object).value_counts()
        lines = [
            f"# Ingestion batch `{self.batch_id}`",
            "",
            f"- accepted: **{len(self.accepted)}**, rejected: **{len(self.rejected)}** "
            f"of {self.n_candidates} candidates ({self.ignored_files} non-image files ignored)",
            f"- raw data now holds {self.n_raw_images} images"
            + (f"; data version (dvc md5) `{self.data_version}`" if self.data_version else ""),
        ]
        if len(reasons):
            lines += ["", "| reason | files |", "|---|---|"]
            lines += [f"| {reason} | {n} |" for reason, n in reasons.items()]
            lines += ["", "| rejected file | reason | message |", "|---|---|---|"]
            lines += [
                f"| `{r['source_path']}` | {r['reason']} | {str(r['message']).replace('|', '/')} |"
                for r in self.rejected
            ]
        return "\n".join(lines) + "\n"


def _finding(labels: dict[str, Any]) -> str:
    names = [_FINDING_NAME[c] for c in FINDING_COLUMNS if int(labels.get(c, 0) or 0)]
    if names:
        return "|".join(names)
    return NO_FINDING if labels.get("label") == NORMAL else ""


def _write_png16(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    grey = np.rint(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(grey).save(tmp, format="PNG")


def _read_raw_labels(raw_dir: Path) -> pd.DataFrame:
    path = raw_dir / RAW_LABELS
    if not path.is_file():
        return pd.DataFrame(columns=list(RAW_COLUMNS))
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _discover_batch(
    incoming_dir: Path, labels_csv: str | None, site: str | None, batch_id: str
) -> tuple[Discovery, RawBatchResult]:
    """The batch's files and label rows; refuses a batch without labels or files."""
    discovery = discover("folder", incoming_dir, labels_csv, site)
    if not discovery.labelled:
        raise DataError(
            f"{incoming_dir} has no labels table ({labels_csv or 'labels.csv'}); training needs "
            "a label per image: add labels.csv with columns image and label (normal/abnormal) "
            "or finding"
        )
    result = RawBatchResult(
        batch_id=batch_id,
        n_candidates=len(discovery.items) + len(discovery.rejects),
        rejected=list(discovery.rejects),
        ignored_files=discovery.ignored_files,
    )
    if result.n_candidates == 0:
        raise DataError(f"{incoming_dir} holds no image file; nothing to ingest")
    return discovery, result


def _raw_row(row: Row, name: str, batch_id: str, ingested_at: str) -> dict[str, Any]:
    """The raw labels table's row of an accepted image (pseudonyms only)."""
    fields = row.fields
    age = fields["age"]
    return {
        "image": name,
        "label": fields["label"],
        "finding": _finding(fields),
        "patient_id": fields["patient_id"],
        "study_id": fields["study_id"],
        "sex": fields["sex"],
        "age": "" if age is None or pd.isna(age) else f"{float(age):g}",
        "view_position": fields["view_position"],
        "site": fields["site"],
        "batch": batch_id,
        "ingested_at": ingested_at,
    }


def add_batch_to_raw(
    incoming_dir: str | os.PathLike[str],
    raw_dir: str | os.PathLike[str],
    *,
    salt: str,
    labels_csv: str | None = None,
    site: str | None = None,
    limits: ImageLimits = ImageLimits(),
    batch_id: str | None = None,
) -> RawBatchResult:
    """Validate and de-identify an incoming batch and add the accepted images to ``raw_dir``.

    Each file goes through :func:`cxr_triage.data.ingest.read_item`, the reader the ``ingest``
    stage uses, so an image keeps one ``image_id`` (and a patient one pseudonym) whichever way
    it arrives.

    Args:
        incoming_dir: the batch, in the ``folder`` source layout with a labels table.
        raw_dir: the raw data folder (created if missing).
        salt: pseudonymisation key (:func:`cxr_triage.data.deid.salt_from_env`); use the same
            one as the ``ingest`` stage so a patient keeps one pseudonym.
        labels_csv: labels table relative to ``incoming_dir`` (default ``labels.csv``).
        site: site name for rows whose labels carry none (default: the batch folder's name).
        limits: image guards (``ingest.max_pixels``, ``ingest.allowed_modalities``).
        batch_id: name of the batch (default: UTC time stamp).

    Returns:
        Accepted and rejected files; ``raw_dir/labels.csv`` lists the accepted ones.

    Raises:
        DataError: the batch has no labels table or no file at all.
        ConfigError: missing folder or labels table.
    """
    incoming_dir, raw_dir = Path(incoming_dir), Path(raw_dir)
    now = datetime.now(UTC)
    batch_id = batch_id or now.strftime("batch-%Y%m%dT%H%M%SZ")
    discovery, result = _discover_batch(incoming_dir, labels_csv, site, batch_id)
    existing = _read_raw_labels(raw_dir)
    known = set(existing["image"])
    pseudonymiser = Pseudonymiser(salt)
    (raw_dir / RAW_IMAGES).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    written: list[Path] = []
    try:
        for item in discovery.items:
            outcome, name = _read_new_item(item, pseudonymiser, limits, known)
            if isinstance(outcome, Reject):
                result.rejected.append(outcome.to_dict())
                continue
            _write_png16(outcome.image.pixels, raw_dir / name)
            written.append(raw_dir / name)
            known.add(name)
            rows.append(_raw_row(outcome, name, batch_id, now.isoformat(timespec="seconds")))
            result.accepted.append(
                {"image": name, "label": outcome.fields["label"], "site": item.site}
            )
        table = _write_raw_labels(raw_dir, existing, rows)
    except BaseException:
        for path in written:  # the labels table was not replaced: leave no orphan image
            path.unlink(missing_ok=True)
        raise
    result.n_raw_images = len(table)
    log.info(
        "batch %s: %d accepted, %d rejected; raw data holds %d images",
        batch_id,
        len(result.accepted),
        len(result.rejected),
        result.n_raw_images,
    )
    return result


def _read_new_item(
    item: Any, pseudonymiser: Pseudonymiser, limits: ImageLimits, known: set[str]
) -> tuple[Any, str]:
    """Read one file with :func:`read_item`; a duplicate of an image in ``known`` is a Reject.

    Returns the outcome (a row or a :class:`Reject`) and the raw image's relative name.
    """
    outcome = read_item(item, pseudonymiser=pseudonymiser, limits=limits, require_label=True)
    name = None if isinstance(outcome, Reject) else f"{RAW_IMAGES}/{outcome.image_id}.png"
    if name in known:
        outcome = Reject(
            item.rel_path,
            "duplicate",
            "this image (same SOP Instance UID or content) is already in the raw data; "
            "remove the copy",
        )
    return outcome, name


def _write_raw_labels(
    raw_dir: Path, existing: pd.DataFrame, rows: list[dict[str, Any]]
) -> pd.DataFrame:
    """Replace ``raw_dir/labels.csv`` atomically with ``existing`` plus ``rows``; the table."""
    table = pd.concat([existing, pd.DataFrame(rows, columns=list(RAW_COLUMNS))])
    with atomic_path(raw_dir / RAW_LABELS) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    return table


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(
            f"`{' '.join(cmd[2:] if cmd[0] == sys.executable else cmd)}` failed in {cwd} "
            f"(exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def dvc_add(repo_dir: str | os.PathLike[str], target: str) -> str:
    """``dvc add <target>`` in ``repo_dir``; return the md5 recorded in ``<target>.dvc``.

    Raises:
        DataError: ``dvc add`` failed (e.g. not a DVC repository: run ``dvc init``).
    """
    import yaml

    repo_dir = Path(repo_dir)
    _run([sys.executable, "-m", "dvc", "add", "-q", target], repo_dir)
    info = yaml.safe_load((repo_dir / f"{target}.dvc").read_text(encoding="utf-8"))
    return str(info["outs"][0]["md5"])


def git_commit(repo_dir: str | os.PathLike[str], paths: list[str], message: str) -> str:
    """Stage ``paths`` and commit them; return the new commit (the .dvc file of a data version).

    Raises:
        DataError: git failed (not a repository, no identity configured...).
    """
    repo_dir = Path(repo_dir)
    existing = [p for p in paths if (repo_dir / p).exists()]
    _run(["git", "add", "--", *existing], repo_dir)
    _run(["git", "commit", "-q", "-m", message, "--", *existing], repo_dir)
    return _run(["git", "rev-parse", "HEAD"], repo_dir).strip()


def move_to_processed(
    incoming_dir: str | os.PathLike[str],
    processed_dir: str | os.PathLike[str],
    batch_id: str,
    report: dict[str, Any] | None = None,
) -> Path:
    """Move every file of the batch to ``processed_dir/<batch_id>/`` (with its report).

    Returns:
        The batch's folder under ``processed_dir``.
    """
    import json

    incoming_dir = Path(incoming_dir)
    target = Path(processed_dir) / batch_id
    target.mkdir(parents=True, exist_ok=False)
    for entry in sorted(incoming_dir.iterdir()):
        shutil.move(str(entry), str(target / entry.name))
    if report is not None:
        (target / "ingestion_report.json").write_text(
            json.dumps(report, indent=2, default=str), encoding="utf-8"
        )
    return target
