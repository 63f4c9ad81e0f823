"""Every answer other than a prediction: its reason code, HTTP status and body, in one place.

Two kinds of refusal reach a client, both as ``{"error", "reason", "request_id", "status"}``:

- the service's own (:class:`Refusal`): malformed requests, authentication, limits, overload
  and an unwritable prediction log;
- an image the reader refuses (:class:`~cxr_triage.errors.InvalidImageError`): its ``reason``
  and the status its class carries (``http_status``), so the status is defined with the error.

429 and 503 answers carry ``Retry-After``. Nothing here imports BentoML.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, Field

from cxr_triage.errors import InvalidImageError

__all__ = [
    "RETRY_AFTER_STATUSES",
    "ErrorResponse",
    "Refusal",
    "error_body",
    "image_refusals",
    "image_status",
]

# The statuses whose answers carry Retry-After.
RETRY_AFTER_STATUSES = frozenset({429, 503})


class Refusal(enum.Enum):
    """A refusal by the service itself; ``reason`` is the lower-case name."""

    BAD_REQUEST = (
        400,
        "malformed request: empty body, no or duplicate file field, a text value (or URL) where "
        "a file belongs, an unknown field, an empty batch, invalid `site`, filename or part "
        "content type, or a malformed multipart body",
    )
    UNAUTHORIZED = (401, "API key missing or wrong")
    NOT_FOUND = (404, "no such route")
    METHOD_NOT_ALLOWED = (405, "the route takes another HTTP method (the APIs take POST)")
    BODY_TOO_LARGE = (413, "body over `CXR_TRIAGE_MAX_BODY_MB` (chunked uploads included)")
    TOO_MANY_IMAGES = (413, "more files than `CXR_TRIAGE_MAX_IMAGES` in one /predict_batch")
    UNSUPPORTED_MEDIA_TYPE = (415, "not `multipart/form-data` (JSON, raw bytes)")
    RATE_LIMITED = (429, "over `CXR_TRIAGE_RATE_LIMIT_PER_MIN` for this client")
    OVERLOADED = (
        503,
        "more uploads than the service takes at once, or the scorer did not answer within "
        "`CXR_TRIAGE_SCORE_TIMEOUT_S` (the batcher refused or was too slow)",
    )
    SCORER_UNAVAILABLE = (503, "the scoring process is restarting or unreachable")
    MODEL_MISMATCH = (
        503,
        "the scorer serves another model than this worker (one of them restarted after a "
        "promotion): restart the service",
    )
    PREDICTION_LOG_UNAVAILABLE = (
        503,
        "the prediction could not be logged (read-only or full disk): nothing is returned "
        "unlogged",
    )
    SPOOL_UNAVAILABLE = (
        503,
        "STOW-RS (`POST /studies`): the DICOM spool is not configured here (`CXR_TRIAGE_SALT`, "
        "`CXR_TRIAGE_PACS_*`) or cannot be created",
    )
    INTERNAL_ERROR = (503, "the service failed on this request in a way nobody foresaw (a bug)")

    def __init__(self, status: int, when: str) -> None:
        self.status = status
        self.when = when

    @property
    def reason(self) -> str:
        return self.name.lower()


# How the README and the OpenAPI description say when each image refusal happens (the status
# comes from the error class itself); reasons not listed use their class docstring's first line.
_IMAGE_WHEN = {
    "truncated_pixel_data": "the file was cut off",
    "image_too_large": "more pixels than the package allows",
    "decompression_bomb": "a small file that decodes to a huge image",
    "not_an_image": "not DICOM, PNG or JPEG",
    "codec_unavailable": "compressed DICOM without an installed decoder",
    "wrong_modality": "readable but not a chest radiograph (CT, MR, SR, non-chest body part)",
    "qc_failed": "the input quality gate refuses it (lateral, inverted, rotated, a child, too "
    "small; `checks` names the checks; `qc.actions` in params.yaml)",
    "no_pixel_data": "a DICOM object without pixels",
    "unsupported_image_type": "colour or multi-frame",
    "invalid_image": "the reader failed on this file in a way nobody foresaw (a bug: report "
    "the request id)",
}


def image_status(error: InvalidImageError) -> int:
    """The HTTP status for an unusable image: the one its error class carries."""
    return int(error.http_status)


def _image_classes() -> Iterator[type[InvalidImageError]]:
    stack: list[type[InvalidImageError]] = [InvalidImageError]
    while stack:
        cls = stack.pop()
        yield cls
        stack.extend(cls.__subclasses__())


def image_refusals() -> list[tuple[str, int, str]]:
    """``(reason, status, when)`` of every image refusal the reader can raise, by status."""
    seen: dict[str, tuple[str, int, str]] = {}
    for cls in _image_classes():
        reason = cls.reason
        status = int(cls.http_status)
        doc = (cls.__doc__ or "").strip().splitlines()
        seen[reason] = (reason, status, _IMAGE_WHEN.get(reason) or (doc[0] if doc else reason))
    return sorted(seen.values(), key=lambda r: (r[1], r[0]))


class ErrorResponse(BaseModel):
    """What every error body looks like (4xx, 503)."""

    error: str = Field(description="what is wrong and what to send instead")
    reason: str = Field(description="stable short code, e.g. wrong_modality")
    request_id: str = Field(description="the X-Request-ID of the answer")
    status: int = Field(description="the HTTP status this error gets")
    checks: list[str] | None = Field(
        default=None,
        description="qc_failed only: the quality-gate checks that refused the image (view, "
        "min_size, pediatric, burned_in_annotation, inverted, rotated, out_of_distribution)",
    )


def error_body(
    status: int,
    message: str,
    reason: str,
    request_id: str,
    checks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The JSON body of every refusal (the ``ErrorResponse`` schema); ``checks`` only for an
    image the quality gate refused (:class:`~cxr_triage.errors.QcFailedError`)."""
    body: dict[str, Any] = {
        "error": message,
        "reason": reason,
        "request_id": request_id,
        "status": status,
    }
    if checks is not None:
        body["checks"] = list(checks)
    return body
