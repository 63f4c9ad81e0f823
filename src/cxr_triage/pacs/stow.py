"""STOW-RS in (PS3.18 10.5): a ``POST /studies`` body into the spool, and the answer to give.

:func:`store_instances` is the whole server side except the HTTP route: it takes the request's
``Content-Type`` and body, stores every instance the way the DICOM listener does (durably,
pseudonymised state, duplicates acknowledged once; the listener's worker triages them), and
returns the status and the Store Instances Response (DICOM JSON) to send back:

======  ===================================================================================
200     every instance stored (``ReferencedSOPSequence``)
202     some stored, some not (``FailedSOPSequence`` with a ``FailureReason`` for each)
409     none stored (``FailedSOPSequence``)
400     the body is not a well-formed multipart/related message
415     not ``multipart/related; type="application/dicom"``
======  ===================================================================================

Failure reasons (PS3.18 Table 10.5.3-4 / PS3.4 Annex B): ``0x0122`` SOP class not supported
here, ``0xA700`` out of resources (the spool cannot take it), ``0xA900`` the instance does not
match (no valid UIDs, or another study than the URL's), ``0xC000`` cannot understand (not a
parsable DICOM instance).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from cxr_triage.errors import InvalidImageError
from cxr_triage.io.dicom.parse import parse_dicom
from cxr_triage.io.records import ImageLimits
from cxr_triage.pacs.scp import storage_sop_classes
from cxr_triage.pacs.settings import PacsSettings
from cxr_triage.pacs.spool import Spool, SpoolUnavailableError

__all__ = [
    "MEDIA_TYPE",
    "StowRequestError",
    "StowResponse",
    "parse_multipart_related",
    "store_instances",
]

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/dicom+json"
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_PARAM = re.compile(r';\s*([A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]+)')


class StowRequestError(Exception):
    """The request as a whole cannot be taken (400 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class StowResponse:
    """What to answer: an HTTP status and a DICOM JSON body (PS3.18 F.2, ``MEDIA_TYPE``)."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    stored: int = 0
    failed: int = 0
    error: str | None = None  # for 400/415: what is wrong with the request


def parse_multipart_related(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a ``multipart/related; type="application/dicom"`` body (RFC 2387).

    Raises:
        StowRequestError: 415 for another media type, 400 for a malformed message.
    """
    media, _, params = (content_type or "").partition(";")
    values = {k.lower(): v.strip('"') for k, v in _PARAM.findall(";" + params)}
    if media.strip().lower() != "multipart/related" or values.get("type", "").lower() not in (
        "application/dicom",
        "",
    ):
        raise StowRequestError(
            415,
            'send multipart/related; type="application/dicom" with one DICOM instance per part '
            "(PS3.18 10.5); this server takes no JSON or XML metadata bodies",
        )
    boundary = values.get("boundary")
    if not boundary:
        raise StowRequestError(400, "the multipart/related Content-Type has no boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise StowRequestError(400, "the body is not a complete multipart message (no closing "
                                    "boundary)")  # fmt: skip
    parts = []
    for piece in pieces[1:-1]:
        piece = piece.removeprefix(b"\r\n")
        headers, separator, content = piece.partition(b"\r\n\r\n")
        if not separator:
            raise StowRequestError(400, "a part of the multipart message has no header block")
        part_type = _header(headers, "content-type")
        if part_type and part_type.split(";")[0].strip().lower() != "application/dicom":
            raise StowRequestError(415, f"a part is {part_type}; every part must be "
                                        "application/dicom")  # fmt: skip
        parts.append(content.removesuffix(b"\r\n"))
    if not parts:
        raise StowRequestError(400, "the multipart message has no part")
    return parts


def _header(block: bytes, name: str) -> str:
    for line in block.decode("latin-1").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def store_instances(
    content_type: str,
    body: bytes,
    spool: Spool,
    settings: PacsSettings,
    *,
    study_instance_uid: str | None = None,
    site: str | None = None,
    limits: ImageLimits = ImageLimits(),
) -> StowResponse:
    """Store a STOW-RS request's instances in the spool and say what happened.

    Args:
        content_type: the request's ``Content-Type`` header.
        body: the request body.
        spool: where instances go (opened with the pseudonymisation key).
        settings: which SOP classes are accepted.
        study_instance_uid: the study of ``POST /studies/{uid}`` (instances of another study
            are refused with 0xA900); None for ``POST /studies``.
        site: the site the sender stands for (recorded with the predictions).
        limits: the guards used to parse each instance's header.

    Returns:
        The status and the Store Instances Response to send (module docstring).
    """
    try:
        parts = parse_multipart_related(content_type, body)
    except StowRequestError as exc:
        return StowResponse(exc.status, error=str(exc))
    accepted = set(storage_sop_classes(settings))
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for data in parts:
        try:
            ds = parse_dicom(io.BytesIO(data), len(data), limits, header_only=True).ds
        except InvalidImageError as exc:
            log.warning("STOW-RS part refused: not a parsable DICOM instance (%s)", exc.reason)
            failed.append(_item("", "", CANNOT_UNDERSTAND))
            continue
        sop_class = str(ds.get("SOPClassUID", "") or "")
        sop_instance = str(ds.get("SOPInstanceUID", "") or "")
        study = str(ds.get("StudyInstanceUID", "") or "")
        if sop_class not in accepted:
            failed.append(_item(sop_class, sop_instance, SOP_CLASS_NOT_SUPPORTED))
            continue
        if not all(_UID.fullmatch(u) and len(u) <= 64 for u in (sop_instance, study)) or (
            study_instance_uid is not None and study != study_instance_uid
        ):
            failed.append(_item(sop_class, sop_instance, DOES_NOT_MATCH))
            continue
        meta = getattr(ds, "file_meta", None)
        try:
            outcome = spool.store(
                data,
                sop_instance_uid=sop_instance,
                sop_class_uid=sop_class,
                study_instance_uid=study,
                transfer_syntax=str(meta.TransferSyntaxUID) if meta else None,
                source="stow",
                site=site,
            )
        except SpoolUnavailableError as exc:
            log.error("STOW-RS instance refused: out of resources (0xA700): %s", exc)
            failed.append(_item(sop_class, sop_instance, OUT_OF_RESOURCES))
            continue
        log.info("STOW-RS instance %s of study %s: %s", outcome.key, outcome.study, outcome.status)
        referenced.append(_item(sop_class, sop_instance))
    response: dict[str, Any] = {}
    if referenced:
        response["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else 202 if referenced else 409
    return StowResponse(status, response, stored=len(referenced), failed=len(failed))
