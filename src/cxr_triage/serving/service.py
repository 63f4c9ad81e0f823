"""The BentoML service: HTTP around the :class:`~cxr_triage.inference.predictor.Predictor`.

Two BentoML services, composed with ``bentoml.depends``:

- :class:`CxrTriage` (public, on ``127.0.0.1:3000``): ``/predict`` (one image), ``/predict_batch``
  (several images, a result or an error for each) and ``/model_info``. It decodes and
  preprocesses uploads (:meth:`Predictor.prepare`), labels them (:meth:`Predictor.predictions`)
  and appends every prediction to the :class:`~cxr_triage.inference.predlog.PredictionLog`
  *before* answering.
- :class:`CxrScorer` (internal, reached over a Unix socket): one batchable API around
  :meth:`Predictor.score`. BentoML's adaptive batching merges the images of concurrent requests,
  from every worker of :class:`CxrTriage`, into one network call.

:class:`RequestGuard` (an ASGI middleware) gives every response an ``X-Request-ID``, checks the
optional API key (``CXR_TRIAGE_API_KEY``), refuses oversize bodies (413) and anything but a
multipart upload with the right file fields (400/415), and rewrites BentoML's own 4xx bodies into
the same JSON shape as the service's: ``{"error", "reason", "request_id"}``.

Status codes (``reason`` in the body):

====  =========================================================================================
400   malformed request: empty body, no/duplicate/text-valued file field, empty list
      (``bad_request``), truncated file (``truncated_pixel_data``)
401   API key missing or wrong (``unauthorized``)
413   body over ``CXR_TRIAGE_MAX_BODY_MB`` (``body_too_large``), too many images
      (``too_many_images``), image over the pixel limit (``image_too_large``),
      decompression bomb (``decompression_bomb``)
415   not multipart/form-data (``unsupported_media_type``), not DICOM/PNG/JPEG
      (``not_an_image``), compressed DICOM without a decoder (``codec_unavailable``)
422   a readable file that is not a chest radiograph: wrong modality or body part
      (``wrong_modality``), no pixel data (``no_pixel_data``), colour or multi-frame
      (``unsupported_image_type``)
503   the prediction log cannot be written (``prediction_log_unavailable``): nothing is returned
      unlogged
====  =========================================================================================

Configuration (environment, read when the service is defined or started):
``CXR_TRIAGE_MODEL_TAG`` (see :func:`~cxr_triage.inference.registry.resolve_model_tag`),
``CXR_TRIAGE_API_KEY``, ``CXR_TRIAGE_PREDICTION_LOG``, ``CXR_TRIAGE_MAX_BODY_MB`` (64),
``CXR_TRIAGE_WORKERS`` (1), ``CXR_TRIAGE_THREADS`` (2, decode threads per worker),
``CXR_TRIAGE_SCORE_THREADS`` (2, onnxruntime threads), ``CXR_TRIAGE_MAX_BATCH_SIZE`` (32),
``CXR_TRIAGE_MAX_LATENCY_MS`` (1000).
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from pydantic import BaseModel, BeforeValidator, Field, StringConstraints

from cxr_triage.errors import ConfigError, CxrError, InvalidImageError
from cxr_triage.inference.registry import resolve_model_tag

__all__ = [
    "API_KEY_ENV",
    "MAX_BODY_ENV",
    "BatchItem",
    "BatchResponse",
    "CxrScorer",
    "CxrTriage",
    "ErrorResponse",
    "PredictionResponse",
    "RequestGuard",
    "status_for",
]

log = logging.getLogger(__name__)

API_KEY_ENV = "CXR_TRIAGE_API_KEY"
MAX_BODY_ENV = "CXR_TRIAGE_MAX_BODY_MB"
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
# Upload routes and the multipart file field each one needs.
UPLOAD_FIELDS = {"/predict": "image", "/predict_batch": "images"}
USAGE = (
    "send multipart/form-data with the image file in field 'image' to /predict (e.g. "
    "curl -F image=@chest.dcm -F site=hospital_a http://127.0.0.1:3000/predict), or in one or "
    "more fields 'images' to /predict_batch; DICOM (CR/DX chest), PNG or JPEG"
)

# HTTP status for each InvalidImageError reason (see the module docstring).
_IMAGE_STATUS = {
    "truncated_pixel_data": 400,
    "image_too_large": 413,
    "decompression_bomb": 413,
    "not_an_image": 415,
    "codec_unavailable": 415,
    "wrong_modality": 422,
    "no_pixel_data": 422,
    "unsupported_image_type": 422,
}

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cxr_triage_request_id", default=None
)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise ConfigError(
            f"{name}={value!r} is not an integer; unset it or give a number"
        ) from exc
    if number < 1:
        raise ConfigError(f"{name}={value!r} must be at least 1")
    return number


def _max_body_bytes() -> int:
    value = os.environ.get(MAX_BODY_ENV, "").strip() or "64"
    try:
        megabytes = float(value)
    except ValueError as exc:
        raise ConfigError(f"{MAX_BODY_ENV}={value!r} is not a number of megabytes") from exc
    if megabytes <= 0:
        raise ConfigError(f"{MAX_BODY_ENV}={value!r} must be positive")
    return int(megabytes * 2**20)


def status_for(error: InvalidImageError) -> int:
    """The HTTP status for an unusable image (422 for reasons not listed)."""
    return _IMAGE_STATUS.get(error.reason, 422)


def current_request_id() -> str:
    """The id :class:`RequestGuard` gave this request (a fresh one outside HTTP)."""
    return _REQUEST_ID.get() or uuid.uuid4().hex


# -- response schemas ---------------------------------------------------------------------------


class PredictionResponse(BaseModel):
    """One image's prediction."""

    request_id: str = Field(description="id of this prediction, also in the prediction log")
    prob_abnormal: float = Field(ge=0, le=1, description="calibrated probability of abnormal")
    label: str = Field(description="'abnormal' when prob_abnormal >= threshold, else 'normal'")
    threshold: float = Field(description="the operating threshold of this model")
    model_tag: str = Field(description="the model that answered (BentoML model tag)")
    disclaimer: str = Field(description="not for clinical use")


class ErrorResponse(BaseModel):
    """What every 4xx/503 body looks like."""

    error: str = Field(description="what is wrong and what to send instead")
    reason: str = Field(description="stable short code, e.g. wrong_modality")
    request_id: str
    status: int = Field(description="the HTTP status this error gets")


class BatchItem(BaseModel):
    """One image of a batch: a prediction or the error it alone would have got."""

    index: int = Field(description="position of the file in the request")
    status: int = Field(description="200, or the 4xx this image would get from /predict")
    prediction: PredictionResponse | None = None
    error: ErrorResponse | None = None


class BatchResponse(BaseModel):
    """Per-image results of /predict_batch, in request order."""

    request_id: str
    n_ok: int
    n_failed: int
    results: list[BatchItem]
    disclaimer: str


def _site(value: Any) -> Any:
    # Multipart text fields are JSON-decoded by BentoML first: "7" arrives as 7.
    return None if value in (None, "") else str(value) if isinstance(value, int | float) else value


# The length limit sits on the str member: on the union pydantic raises TypeError for None (a 500).
Site = Annotated[
    Annotated[str, StringConstraints(max_length=128)] | None,
    BeforeValidator(_site),
    Field(description="the site (hospital) the image comes from; optional"),
]


def _error_body(status: int, message: str, reason: str, request_id: str) -> dict[str, Any]:
    return {"error": message, "reason": reason, "request_id": request_id, "status": status}


def _error_response(status: int, message: str, reason: str, request_id: str) -> Any:
    from starlette.responses import JSONResponse

    body = _error_body(status, message, reason, request_id)
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


# -- services -----------------------------------------------------------------------------------

_MODEL_TAG = resolve_model_tag()
_MAX_BATCH_SIZE = _env_int("CXR_TRIAGE_MAX_BATCH_SIZE", 32)


@bentoml.service(
    name="cxr-scorer",
    workers=1,  # one process, so concurrent requests from every front worker meet in one batch
    threads=1,
    resources={"cpu": "2"},
    traffic={"timeout": 60, "max_concurrency": 256},
    # BentoML 1.4.31+ recycles the callers' connection session after 100 requests (or 300 s) by
    # closing it under requests still in flight: "Server disconnected", a 500 (bentoml/BentoML
    # #5540). Over a local Unix socket there is nothing to rebalance, so never recycle.
    runner_connection={"max_requests": 2**62, "max_age": 10.0**12},
)
class CxrScorer:
    """The network step, batched across requests (internal; not exposed on the public port)."""

    model = bentoml.models.BentoModel(_MODEL_TAG)

    def __init__(self) -> None:
        from cxr_triage.inference.predictor import Predictor

        self.predictor = Predictor(
            self.model.path,
            num_threads=_env_int("CXR_TRIAGE_SCORE_THREADS", 2),
            model_tag=str(self.model.tag),
        )

    @bentoml.api(
        batchable=True,
        max_batch_size=_MAX_BATCH_SIZE,
        max_latency_ms=_env_int("CXR_TRIAGE_MAX_LATENCY_MS", 1000),
    )
    def score(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image ``[prob_abnormal, raw, *summary]`` for prepared uint8 images ``(S, S)``."""
        scores = self.predictor.score(np.stack(images))
        return list(np.column_stack([scores.prob_abnormal, scores.raw, scores.summary]))


@bentoml.service(
    name="cxr-triage",
    workers=_env_int("CXR_TRIAGE_WORKERS", 1),
    resources={"cpu": "2"},
    traffic={"timeout": 60, "max_concurrency": 128},
    http={"host": "127.0.0.1"},
    labels={"task": "cxr-normal-vs-abnormal", "intended_use": "research, not for clinical use"},
)
class CxrTriage:
    """Chest X-ray Normal/Abnormal triage (research use only, not for clinical use)."""

    model = bentoml.models.BentoModel(_MODEL_TAG)
    scorer = bentoml.depends(CxrScorer)

    def __init__(self) -> None:
        from cxr_triage.inference.predictor import Predictor
        from cxr_triage.state import state_layout

        # The network runs in CxrScorer; this copy only decodes, labels and describes.
        self.predictor = Predictor(self.model.path, num_threads=1, model_tag=str(self.model.tag))
        self.log_path = state_layout().prediction_log
        self._log: Any = None
        self._threads = _env_int("CXR_TRIAGE_THREADS", 2)
        self._limiter: Any = None
        log.info("serving %s; prediction log %s", self.predictor.model_tag, self.log_path)

    # -- helpers ---------------------------------------------------------------------------

    async def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work (decode, SQLite) in this worker's small thread pool."""
        import anyio

        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._threads)
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)

    async def _score(self, prepared: Sequence[Any]) -> Any:
        from cxr_triage.inference.predictor import Scores

        vectors: list[np.ndarray] = []
        for start in range(0, len(prepared), _MAX_BATCH_SIZE):
            chunk = [p.pixels for p in prepared[start : start + _MAX_BATCH_SIZE]]
            vectors.extend(await self.scorer.to_async.score(chunk))
        out = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
        return Scores(prob_abnormal=out[:, 0], raw=out[:, 1], summary=out[:, 2:])

    def _append(self, rows: list[dict[str, Any]]) -> None:
        from cxr_triage.inference.predlog import PredictionLog

        if self._log is None:
            self._log = PredictionLog(self.log_path)
        self._log.append(rows)

    async def _record(self, predictions: Sequence[Any], ids: Sequence[str]) -> str | None:
        """Append predictions to the log; the error message when that failed."""
        rows = [
            {
                **p.features,
                "request_id": rid,
                "model_tag": p.model_tag,
                "threshold": p.threshold,
            }
            for p, rid in zip(predictions, ids, strict=True)
        ]
        try:
            await self._run(self._append, rows)
        except (sqlite3.Error, OSError, CxrError) as exc:
            self._log = None  # reopen on the next request (the disk may come back)
            log.error("prediction log %s not writable: %s", self.log_path, exc)
            return (
                f"the prediction could not be recorded in the prediction log ({exc}); "
                "no unlogged prediction is returned: retry later, and operators should check "
                f"that {self.log_path} is writable (CXR_TRIAGE_PREDICTION_LOG)"
            )
        return None

    def _response(self, prediction: Any, request_id: str) -> PredictionResponse:
        return PredictionResponse(request_id=request_id, **prediction.to_dict())

    # -- APIs ------------------------------------------------------------------------------

    @bentoml.api(route="/predict")
    async def predict(self, image: Path, site: Site = None) -> PredictionResponse:
        """Classify one chest radiograph (DICOM CR/DX, PNG or JPEG) as normal or abnormal.

        Send multipart/form-data: the file in field ``image``, optionally ``site``.
        """
        request_id = current_request_id()
        try:
            prepared = await self._run(self.predictor.prepare, image, {"site": site})
        except InvalidImageError as exc:
            return _error_response(status_for(exc), str(exc), exc.reason, request_id)
        scores = await self._score([prepared])
        (prediction,) = await self._run(self.predictor.predictions, [prepared], scores)
        failure = await self._record([prediction], [request_id])
        if failure is not None:
            return _error_response(503, failure, "prediction_log_unavailable", request_id)
        return self._response(prediction, request_id)

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, images: list[Path], site: Site = None) -> BatchResponse:
        """Classify several radiographs; each gets a prediction or its own error.

        Send multipart/form-data with one field ``images`` per file, optionally ``site``.
        """
        request_id = current_request_id()
        if not images:
            return _error_response(
                400, f"no images in the request; {USAGE}", "bad_request", request_id
            )
        items: list[BatchItem | None] = [None] * len(images)
        good: list[tuple[int, Any]] = []
        for index, path in enumerate(images):
            try:
                good.append((index, await self._run(self.predictor.prepare, path, {"site": site})))
            except InvalidImageError as exc:
                status = status_for(exc)
                error = ErrorResponse(
                    error=str(exc),
                    reason=exc.reason,
                    request_id=f"{request_id}-{index}",
                    status=status,
                )
                items[index] = BatchItem(index=index, status=status, error=error)
        if good:
            prepared = [p for _, p in good]
            scores = await self._score(prepared)
            predictions = await self._run(self.predictor.predictions, prepared, scores)
            ids = [f"{request_id}-{index}" for index, _ in good]
            failure = await self._record(predictions, ids)
            if failure is not None:
                return _error_response(503, failure, "prediction_log_unavailable", request_id)
            for (index, _), prediction, rid in zip(good, predictions, ids, strict=True):
                items[index] = BatchItem(
                    index=index, status=200, prediction=self._response(prediction, rid)
                )
        from cxr_triage.inference.predictor import NOT_FOR_CLINICAL_USE

        results = [item for item in items if item is not None]
        return BatchResponse(
            request_id=request_id,
            n_ok=len(good),
            n_failed=len(results) - len(good),
            results=results,
            disclaimer=NOT_FOR_CLINICAL_USE,
        )

    @bentoml.api(route="/model_info")
    async def model_info(self) -> dict[str, Any]:
        """The model: tag, candidate, threshold and operating point, metrics, versions."""
        return self.predictor.info_summary()


# -- HTTP guard ---------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_DISPOSITION_NAME = re.compile(rb'(?:^|;)\s*name="?([^";\r\n]*)"?', re.IGNORECASE)
_DISPOSITION_FILE = re.compile(rb"(?:^|;)\s*filename\*?=", re.IGNORECASE)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _multipart_fields(body: bytes, content_type: str) -> list[tuple[str, bool]] | None:
    """``(name, is_file)`` of each part of a multipart body; None when it cannot be split."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        return None
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields: list[tuple[str, bool]] = []
    position = body.find(delimiter)
    while position != -1:
        start = position + len(delimiter)
        if body[start : start + 2] == b"--":
            break
        end = body.find(b"\r\n\r\n", start)
        if end == -1:
            break
        for line in body[start:end].split(b"\r\n"):
            if line.lower().startswith(b"content-disposition:"):
                value = line.split(b":", 1)[1]
                name = _DISPOSITION_NAME.search(value)
                if name is not None:
                    fields.append(
                        (
                            name.group(1).decode("utf-8", "replace"),
                            bool(_DISPOSITION_FILE.search(value)),
                        )
                    )
        position = body.find(delimiter, end)
    return fields


class RequestGuard:
    """ASGI middleware: request ids, API key, body limit, upload checks, uniform 4xx bodies.

    Args:
        app: the ASGI app it wraps.
        api_key: the key clients must send; default ``$CXR_TRIAGE_API_KEY`` (unset: no auth).
        max_body_bytes: largest accepted request body; default ``$CXR_TRIAGE_MAX_BODY_MB``.
        max_images: most files in one /predict_batch request.
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        *,
        api_key: str | None = None,
        max_body_bytes: int | None = None,
        max_images: int | None = None,
    ) -> None:
        self.app = app
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self.api_key = key.strip() or None
        self.max_body_bytes = max_body_bytes or _max_body_bytes()
        self.max_images = max_images or _MAX_BATCH_SIZE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        token = _REQUEST_ID.set(request_id)
        send = _with_request_id(send, request_id)
        try:
            refusal = await self._check(scope, receive, request_id)
            if isinstance(refusal, tuple):
                status, message, reason = refusal
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
                await _send_json(
                    send, status, _error_body(status, message, reason, request_id), headers
                )
                return
            if refusal is not None:  # the body, read here: hand it on
                receive = _replay(refusal)
            await self.app(scope, receive, _uniform_errors(send, request_id))
        finally:
            _REQUEST_ID.reset(token)

    def _authorised(self, scope: Scope) -> bool:
        sent = _header(scope, b"x-api-key")
        authorization = _header(scope, b"authorization") or ""
        if authorization[:7].lower() == "bearer ":
            sent = authorization[7:].strip()
        return sent is not None and hmac.compare_digest(
            sent.encode("utf-8"), self.api_key.encode("utf-8")
        )

    async def _check(
        self, scope: Scope, receive: Receive, request_id: str
    ) -> tuple[int, str, str] | bytes | None:
        """A refusal ``(status, message, reason)``, the body read for an upload, or None."""
        path = scope.get("path", "")
        if self.api_key is not None and path not in OPEN_PATHS and not self._authorised(scope):
            return (
                401,
                f"missing or wrong API key: send the header 'Authorization: Bearer <key>' or "
                f"'X-API-Key: <key>' with the key the operator set in {API_KEY_ENV}",
                "unauthorized",
            )
        content_type = _header(scope, b"content-type") or ""
        multipart = content_type.split(";")[0].strip().lower() == "multipart/form-data"
        if multipart and "boundary=" not in content_type:
            # BentoML's parser fails on this with a 500, on every route.
            return (400, f"multipart/form-data without a boundary; {USAGE}", "bad_request")
        field = UPLOAD_FIELDS.get(path)
        if field is None or scope.get("method") != "POST":
            return None
        too_large = (
            413,
            f"request body larger than the limit of {self.max_body_bytes / 2**20:g} MB; send one "
            f"image at a time or a smaller file (operators: {MAX_BODY_ENV})",
            "body_too_large",
        )
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return too_large
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            return too_large
        if not body:
            return (400, f"empty request body; {USAGE}", "bad_request")
        if not multipart:
            return (
                415,
                f"unsupported content type {content_type or '(none)'!r}; {USAGE}",
                "unsupported_media_type",
            )
        fields = _multipart_fields(body, content_type)
        if fields is None:
            return (400, f"malformed multipart body (no boundary); {USAGE}", "bad_request")
        files = [is_file for name, is_file in fields if name == field]
        if not all(files):
            return (
                400,
                f"field {field!r} holds text, not a file: upload the file itself (curl -F "
                f"{field}=@chest.dcm); URLs and paths are not fetched",
                "bad_request",
            )
        if not files:
            what = "no images in the request" if field == "images" else "no file field 'image'"
            return (400, f"{what}; {USAGE}", "bad_request")
        if field == "image" and len(files) > 1:
            return (
                400,
                f"{len(files)} files in field 'image'; send one, or use /predict_batch "
                "with field 'images' for several",
                "bad_request",
            )
        if len(files) > self.max_images:
            return (
                413,
                f"{len(files)} images in one request; send at most {self.max_images} per request",
                "too_many_images",
            )
        return body


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it exceeds ``limit`` (chunked bodies included)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _with_request_id(send: Send, request_id: str) -> Send:
    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
            ]
            headers.append((b"x-request-id", request_id.encode("latin-1")))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str]
) -> None:
    payload = json.dumps(body).encode("utf-8")
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode("latin-1")),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _uniform_errors(send: Send, request_id: str) -> Send:
    """Rewrite BentoML's own 4xx bodies (validation errors) into ``ErrorResponse`` form."""
    held: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            held["start"] = message
            return
        if "start" not in held or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        start, raw = held.pop("start"), b"".join(chunks)
        status = start["status"]
        try:
            original = json.loads(raw)
        except ValueError:
            original = raw.decode("utf-8", "replace")
        if isinstance(original, dict) and "reason" in original:
            body = original  # already ours
        else:
            if isinstance(original, list) and len(original) == 1:
                original = original[0]
            detail = original.get("error", original) if isinstance(original, dict) else original
            extra = original.get("detail") if isinstance(original, dict) else None
            if extra:
                detail = f"{detail}: {json.dumps(extra)[:500]}"
            body = _error_body(
                status, f"invalid request ({detail}); {USAGE}", "bad_request", request_id
            )
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in start.get("headers", [])
            if k.lower() not in (b"content-length", b"content-type")
        }
        await _send_json(send, status, body, headers)

    return wrapped


CxrTriage.add_asgi_middleware(RequestGuard)
