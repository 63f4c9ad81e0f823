"""Ground truth: radiologists' final reads, fed back beside the prediction log.

Drift says the inputs changed; only labels say the model got worse. A read names the prediction
it grades by its ``request_id`` (what the service answered) or by the study's Study Instance UID
(DICOM inputs), gives the final ``label`` (normal / abnormal) and optionally the ChestX-ray14
``findings`` (``|``-separated). Reads are stored in the prediction log's SQLite file, in their
own table (:meth:`~cxr_triage.inference.predlog.PredictionLog.record_feedback`); a later read of
the same prediction replaces the earlier one. Monitoring joins them with the predictions of its
window (realised sensitivity, specificity and calibration at the operating point).

Study Instance UIDs never enter the log: they are stored as their keyed digest
(:meth:`cxr_triage.data.deid.Pseudonymiser.study`, the ingest stage's ``study_id``), with the
secret ``CXR_TRIAGE_SALT``. A prediction can be found by study only if its log row has the
same ``study_key`` (the service or the DICOM listener logs it with :func:`study_key`).

Entry points: ``cxr-triage feedback FILE.csv`` (:func:`read_feedback_csv` then
:func:`record_feedback`) and, for an HTTP endpoint, :func:`parse_reads` on the JSON body, then
:func:`record_feedback`.

Retraining on fed-back studies: the log holds features, never pixels, so the images come from
the PACS. Export the studies of a feedback file as DICOM into a folder, then
:func:`write_ingestion_labels` writes that folder's ``labels.csv`` (matching each file's Study
Instance UID with the file's reads), which makes it a batch for ``data/incoming/`` and the
ingestion flow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_triage.atomic import atomic_path
from cxr_triage.data.deid import Pseudonymiser, salt_from_env
from cxr_triage.data.labels import finding_flags
from cxr_triage.errors import DataError
from cxr_triage.vocabulary import ABNORMAL, LABELS, NO_FINDING, NORMAL

__all__ = [
    "FeedbackReceipt",
    "Read",
    "parse_reads",
    "read_feedback_csv",
    "record_feedback",
    "study_key",
    "write_ingestion_labels",
]

_REQUEST_ALIASES = ("request_id", "request id", "request")
_STUDY_ALIASES = ("study_uid", "study instance uid", "studyinstanceuid", "study")
_LABEL_ALIASES = ("label", "final_label", "read")
_FINDING_ALIASES = ("findings", "finding", "finding labels")
_READ_AT_ALIASES = ("read_at", "read at", "reported_at")
_MAX_LISTED = 20


def study_key(study_uid: str, salt: str | None = None) -> str:
    """The keyed digest a Study Instance UID is stored and matched as (never the UID itself).

    Args:
        study_uid: the DICOM Study Instance UID.
        salt: the pseudonymisation secret; default ``$CXR_TRIAGE_SALT``.

    Raises:
        ConfigError: no salt given and ``CXR_TRIAGE_SALT`` unset or too short.
    """
    return Pseudonymiser(salt or salt_from_env(synthetic=False)).study(study_uid.strip())


@dataclass(frozen=True)
class Read:
    """One radiologist's final read of one prediction.

    Attributes:
        label: ``normal`` or ``abnormal``.
        request_id: the prediction's request id (as the service answered it), or None.
        study_key: the study's keyed digest (:func:`study_key`), or None.
        findings: ChestX-ray14 finding names (empty: none given, or "No Finding").
        read_at: when it was read (ISO 8601), when the source says.
    """

    label: str
    request_id: str | None = None
    study_key: str | None = None
    findings: tuple[str, ...] = ()
    read_at: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``("request_id", id)`` or ``("study_key", digest)``: what the read is matched by."""
        if self.request_id:
            return "request_id", self.request_id
        return "study_key", str(self.study_key)


@dataclass(frozen=True)
class FeedbackReceipt:
    """What :func:`record_feedback` did.

    Attributes:
        n_received: reads given.
        n_stored: reads written (new, or replacing an earlier read of the same prediction).
        n_matched: reads that match a logged prediction.
        unmatched: keys of (up to 20) reads that match no logged prediction yet.
    """

    n_received: int
    n_stored: int
    n_matched: int
    unmatched: list[str] = field(default_factory=list)

    def one_line(self) -> str:
        """What was stored, for the CLI."""
        line = f"stored {self.n_stored} reads; {self.n_matched} match a logged prediction"
        n_unmatched = self.n_received - self.n_matched
        if n_unmatched:
            line += f", {n_unmatched} match none yet (first: {self.unmatched[0]})"
        return line


def _pick(record: Mapping[str, Any], aliases: Iterable[str]) -> str | None:
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    for alias in aliases:
        value = lowered.get(alias)
        if value is not None and not (isinstance(value, float) and pd.isna(value)):
            text = str(value).strip()
            if text:
                return text
    return None


_LABEL_VALUES = {"0": NORMAL, "1": ABNORMAL, NO_FINDING.lower(): NORMAL}


def _label(raw: str | None, findings: tuple[str, ...], where: str) -> str:
    if raw is None:
        if findings:
            return ABNORMAL
        raise DataError(f"{where}: no label; give label (normal/abnormal) or findings")
    label = _LABEL_VALUES.get(raw.lower(), raw.lower())
    if label not in LABELS:
        raise DataError(f"{where}: label {raw!r} is neither {NORMAL} nor {ABNORMAL}")
    if label == NORMAL and findings:
        raise DataError(f"{where}: label normal with findings {'|'.join(findings)}")
    return label


def _findings(raw: str | None, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    try:
        flags = finding_flags(raw)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc
    names = [part.strip() for part in raw.split("|") if part.strip()]
    return tuple(n for n in names if n != NO_FINDING) if any(flags.values()) else ()


def parse_reads(
    records: Iterable[Mapping[str, Any]],
    *,
    salt: str | None = None,
    where: str = "read",
    first: int = 1,
) -> list[Read]:
    """Validate reads given as mappings (CSV rows, a JSON body) into :class:`Read` s.

    Each record has ``request_id`` or ``study_uid`` (not both), ``label`` and/or ``findings``,
    and optionally ``read_at``. Study UIDs are turned into keys here (the UID is not kept).

    Args:
        records: the reads.
        salt: the pseudonymisation secret for study UIDs (default ``$CXR_TRIAGE_SALT``).
        where, first: how errors name a record: ``"<where> <first + index>"`` (e.g. a file's
            line).

    Raises:
        DataError: a record without a key, with both keys, or with an invalid label or finding
            (the message names the record).
        ConfigError: study UIDs given and no salt.
    """
    reads = []
    for number, record in enumerate(records, start=first):
        where_this = f"{where} {number}"
        request_id = _pick(record, _REQUEST_ALIASES)
        study_uid = _pick(record, _STUDY_ALIASES)
        if (request_id is None) == (study_uid is None):
            raise DataError(
                f"{where_this}: give request_id (the service's answer) or study_uid, exactly one"
            )
        findings = _findings(_pick(record, _FINDING_ALIASES), where_this)
        reads.append(
            Read(
                label=_label(_pick(record, _LABEL_ALIASES), findings, where_this),
                request_id=request_id,
                study_key=study_key(study_uid, salt) if study_uid else None,
                findings=findings,
                read_at=_pick(record, _READ_AT_ALIASES),
            )
        )
    return reads


def read_feedback_csv(path: str | os.PathLike[str], *, salt: str | None = None) -> list[Read]:
    """The reads of a CSV file (columns as :func:`parse_reads` takes them).

    Raises:
        DataError: the file is missing, unreadable or empty, or a row is invalid (its line).
        ConfigError: study UIDs and no salt.
    """
    records = _read_table(path)
    return parse_reads(records, salt=salt, where=f"{path} line", first=2)


def _read_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise DataError(f"feedback file {path} not found") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"feedback file {path} is not a readable CSV: {exc}") from exc
    if table.empty:
        raise DataError(f"feedback file {path} has no rows")
    return table.to_dict(orient="records")


def record_feedback(
    reads: Sequence[Read], *, log_path: str | os.PathLike[str] | None = None
) -> FeedbackReceipt:
    """Store reads beside the prediction log (all or none), and say how many match a prediction.

    The function a ``/feedback`` endpoint calls with :func:`parse_reads`' output.

    Args:
        reads: validated reads.
        log_path: the prediction log (default: the state folder's).

    Raises:
        ConfigError: the log cannot be opened or created.
    """
    from cxr_triage.inference.predlog import PredictionLog

    log = PredictionLog(log_path)
    try:
        stored = log.record_feedback(
            [
                {
                    "key_kind": read.key[0],
                    "key": read.key[1],
                    "label": read.label,
                    "findings": "|".join(read.findings),
                    "read_at": read.read_at,
                }
                for read in reads
            ]
        )
        matched = log.matched_keys([read.key for read in reads])
    finally:
        log.close()
    keys = [read.key for read in reads]
    unmatched = [f"{kind}={key}" for kind, key in keys if (kind, key) not in matched]
    n_matched = len(reads) - len(unmatched)
    return FeedbackReceipt(len(reads), stored, n_matched, unmatched[:_MAX_LISTED])


def write_ingestion_labels(
    feedback_csv: str | os.PathLike[str], images_dir: str | os.PathLike[str]
) -> tuple[Path, int, int]:
    """Label a folder of DICOM studies exported from the PACS with their fed-back reads.

    Writes ``images_dir/labels.csv`` in the ``folder`` source layout (``image``, ``label``,
    ``finding``), one row per DICOM file whose Study Instance UID has a read in
    ``feedback_csv`` (reads by ``study_uid`` only: request ids name no image). The folder is
    then a batch for ``data/incoming/`` and the ingestion flow (which pseudonymises it).

    Returns:
        The labels file, the files labelled, and the files without a read (left unlabelled;
        the ingestion flow rejects them as ``no_label_row``).

    Raises:
        DataError: no readable feedback, or no file of the folder has a read.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    by_uid: dict[str, dict[str, str]] = {}
    for record in _read_table(feedback_csv):
        uid = _pick(record, _STUDY_ALIASES)
        if uid:
            findings = _findings(_pick(record, _FINDING_ALIASES), f"study {uid}")
            label = _label(_pick(record, _LABEL_ALIASES), findings, f"study {uid}")
            by_uid[uid] = {"label": label, "finding": "|".join(findings) or NO_FINDING}
    folder = Path(images_dir)
    rows, without = [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "labels.csv"):
        try:
            uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        except (InvalidDicomError, AttributeError, OSError):
            without += 1
            continue
        if uid in by_uid:
            rows.append({"image": str(path.relative_to(folder)), **by_uid[uid]})
        else:
            without += 1
    if not rows:
        raise DataError(
            f"no DICOM file under {folder} belongs to a study read in {feedback_csv}; export "
            "the studies of the feedback file (by Study Instance UID) into that folder"
        )
    out = folder / "labels.csv"
    with atomic_path(out) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return out, len(rows), without
