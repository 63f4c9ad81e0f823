"""The HTTP request guard: what every request passes before the service sees it.

:class:`RequestGuard` is plain ASGI middleware (no BentoML import; tests drive it with a stub
app). In order, for every HTTP request it:

1. gives the request an id (the ``X-Request-ID`` header of the answer, the only request-id
   header: BentoML's ``X-BentoML-Request-ID``/``-Trace-ID`` are removed);
2. checks the API key (``Authorization: Bearer <key>`` or ``X-API-Key``) on every route but
   the probes and ``/metrics`` (401);
3. applies the per-client rate limit when one is set (429 with ``Retry-After``);
4. limits every request body (413, chunked bodies included: BentoML reads bodies whole);
5. on the upload routes: sheds load past ``max_in_flight`` uploads in this worker (503
   ``overloaded``), and parses the multipart body with python-multipart's streaming parser
   (the one Starlette and BentoML parse it with again), checking field names, which parts
   are files, filenames, part content types and the ``site`` value (400/413/415);
6. hands the service a rewritten body: client metadata never reaches the filesystem
   (BentoML names its temporary upload files after the client's filename, bentoml/BentoML
   #5532: a 255-byte name was a 500), so every file part is renamed ``upload-<n>``, typed
   ``application/octet-stream``, and text values are passed as JSON strings (BentoML
   JSON-decodes form values: ``7`` would arrive as a number);
7. rewrites every error body the service or BentoML sends into the uniform shape
   ``{"error", "reason", "request_id", "status"}``, adds ``Retry-After`` to 429/503, and
   turns any 500 (an exception nobody caught) into a typed 503 ``internal_error``; a STOW-RS
   answer (``application/dicom+json``, e.g. a 409 with its FailedSOPSequence) is PS3.18's
   shape and passes unchanged.

``POST /studies`` (STOW-RS, :mod:`cxr_triage.serving.dicomweb`) is not an upload form route:
its ``multipart/related`` body passes with the body limit only, and the STOW-RS handler
checks it.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cxr_triage.serving.refusals import RETRY_AFTER_STATUSES, Refusal, error_body
from cxr_triage.serving.settings import ServiceSettings

__all__ = [
    "OPEN_PATHS",
    "PAGE_PREFIX",
    "SITE_PATTERN",
    "UPLOAD_FORMS",
    "USAGE",
    "RateLimiter",
    "RequestGuard",
    "UploadForm",
    "current_request_id",
]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RefusalHook = Callable[[str, int], None]

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
PAGE_PREFIX = "/ui"  # the web page (serving/webui.py)
# A site (hospital) name: what the synthetic sites and ingest sources are called.
SITE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
USAGE = (
    "send multipart/form-data with the image file in field 'image' to /predict (e.g. "
    "curl -F image=@chest.dcm -F site=hospital_a http://127.0.0.1:3000/predict), or in one or "
    "more fields 'images' to /predict_batch; DICOM (CR/DX chest), PNG or JPEG"
)
_SITE = re.compile(SITE_PATTERN)
_MAX_FILENAME_BYTES = 1024
_MAX_TEXT_BYTES = 1024
# RFC 9110 media type: token "/" token, then optional parameters.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}\s*(;.*)?$")
# RFC 2046 boundary characters (at most 70).
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]$")
_DROPPED_HEADERS = frozenset({b"x-request-id", b"x-bentoml-request-id", b"x-bentoml-trace-id"})
_REPLACED_HEADERS = _DROPPED_HEADERS | {b"content-length", b"content-type"}
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cxr_triage_request_id", default=None
)


def current_request_id() -> str:
    """The id :class:`RequestGuard` gave this request (a fresh one outside HTTP)."""
    return _REQUEST_ID.get() or uuid.uuid4().hex


@dataclass(frozen=True)
class UploadForm:
    """The multipart form an upload route takes: one file field and optional text fields."""

    file_field: str
    many: bool
    text_fields: Mapping[str, re.Pattern[str]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [self.file_field, *self.text_fields]


UPLOAD_FORMS: Mapping[str, UploadForm] = {
    "/predict": UploadForm("image", many=False, text_fields={"site": _SITE}),
    "/predict_batch": UploadForm("images", many=True, text_fields={"site": _SITE}),
    "/explain": UploadForm("image", many=False, text_fields={"site": _SITE}),
    "/similar": UploadForm(
        "image",
        many=False,
        text_fields={"site": _SITE, "k": re.compile(r"\A[1-9][0-9]?\Z|\A100\Z")},
    ),
}


class _Refused(Exception):
    """A refusal on its way to the client."""

    def __init__(
        self, refusal: Refusal, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.message = message
        self.headers = dict(headers or {})


# -- rate limit ---------------------------------------------------------------------------------


class RateLimiter:
    """Token buckets per client: ``per_minute`` sustained, ``burst`` at once.

    The state lives in the process: with several front workers each keeps its own buckets
    (the kernel spreads connections over them), so a client gets up to that many times the
    rate. Idle clients are forgotten once more than ``max_clients`` are tracked.
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, time)

    def acquire(self, client: str) -> float:
        """Take one token; 0 when granted, else the seconds until one is available."""
        now = self._clock()
        tokens, then = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > self._max_clients:
                self._forget_idle(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        full = [
            c
            for c, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self.rate >= self.burst
        ]
        for client in full:
            del self._buckets[client]


# -- multipart ----------------------------------------------------------------------------------


class _FormRewriter:
    """Streams a multipart body through python-multipart, checking and rewriting each part.

    The output is the same form with client metadata replaced: file parts become
    ``filename="upload-<n>"`` with ``Content-Type: application/octet-stream``; text values
    become JSON strings; other part headers are dropped.
    """

    def __init__(self, form: UploadForm, boundary: bytes, max_files: int) -> None:
        from python_multipart.multipart import MultipartParser

        self.form = form
        self.boundary = boundary
        self.max_files = max_files
        self.out: list[bytes] = []
        self.files = 0
        self.text_values: dict[str, str] = {}
        self.ended = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._field = bytearray()
        self._value = bytearray()
        self._part: tuple[str, bool] | None = None  # (name, is_file)
        self._text = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def write(self, chunk: bytes) -> None:
        from python_multipart.exceptions import MultipartParseError

        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise _Refused(
                Refusal.BAD_REQUEST, f"malformed multipart body ({exc}); {USAGE}"
            ) from exc

    def finish(self) -> bytes:
        from python_multipart.exceptions import MultipartParseError

        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise _Refused(
                Refusal.BAD_REQUEST, f"malformed multipart body ({exc}); {USAGE}"
            ) from exc
        if not self.ended:
            raise _Refused(
                Refusal.BAD_REQUEST,
                "the multipart body ends before its closing boundary (a truncated upload); "
                f"send it again; {USAGE}",
            )
        return b"".join(self.out)

    # -- parser callbacks ------------------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._headers = []
        self._part = None
        self._text = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers.append((bytes(self._field).strip().lower(), bytes(self._value).strip()))
        self._field = bytearray()
        self._value = bytearray()

    def _on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        headers = dict(self._headers)
        disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise _Refused(
                Refusal.BAD_REQUEST,
                f"a multipart part without 'Content-Disposition: form-data; name=...'; {USAGE}",
            )
        name = _text(options[b"name"])
        if name not in self.form.names:
            shown = name if name is not None and name.isprintable() else "(unprintable)"
            raise _Refused(
                Refusal.BAD_REQUEST,
                f"unknown form field {shown[:64]!r}: this route takes "
                f"{', '.join(repr(n) for n in self.form.names)}; {USAGE}",
            )
        is_file = b"filename" in options
        if name == self.form.file_field:
            if not is_file:
                raise _Refused(
                    Refusal.BAD_REQUEST,
                    f"field {name!r} holds text, not a file: upload the file itself (curl -F "
                    f"{name}=@chest.dcm); URLs and paths are not fetched",
                )
            _check_filename(options[b"filename"])
            _check_content_type(headers.get(b"content-type"))
            self.files += 1
            if not self.form.many and self.files > 1:
                raise _Refused(
                    Refusal.BAD_REQUEST,
                    f"several files in field {name!r}; send one, or use /predict_batch with "
                    "field 'images' for several",
                )
            if self.files > self.max_files:
                raise _Refused(
                    Refusal.TOO_MANY_IMAGES,
                    f"more than {self.max_files} images in one request; send at most "
                    f"{self.max_files} per request",
                )
            self._emit_header(
                f'form-data; name="{name}"; filename="upload-{self.files - 1}"',
                "application/octet-stream",
            )
        else:
            if is_file:
                raise _Refused(
                    Refusal.BAD_REQUEST,
                    f"field {name!r} is a text value, not a file (e.g. -F {name}=hospital_a)",
                )
            if name in self.text_values:
                raise _Refused(Refusal.BAD_REQUEST, f"field {name!r} is given twice; send it once")
        self._part = (name, is_file)

    def _emit_header(self, disposition: str, content_type: str | None) -> None:
        head = b"--" + self.boundary + b"\r\nContent-Disposition: " + disposition.encode()
        if content_type is not None:
            head += b"\r\nContent-Type: " + content_type.encode()
        self.out.append(head + b"\r\n\r\n")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._part is not None
        name, is_file = self._part
        if is_file:
            self.out.append(bytes(data[start:end]))
            return
        self._text += data[start:end]
        if len(self._text) > _MAX_TEXT_BYTES:
            raise _Refused(
                Refusal.BAD_REQUEST, f"field {name!r} is longer than {_MAX_TEXT_BYTES} bytes"
            )

    def _on_part_end(self) -> None:
        assert self._part is not None
        name, is_file = self._part
        if is_file:
            self.out.append(b"\r\n")
            return
        value = _form_value(_text(bytes(self._text)))
        if value == "":
            return  # an empty optional value is the same as none
        pattern = self.form.text_fields[name]
        if value is None or not pattern.match(value):
            raise _Refused(
                Refusal.BAD_REQUEST,
                f"invalid {name!r}: give 1-64 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit (e.g. hospital_a)",
            )
        self.text_values[name] = value
        self._emit_header(f'form-data; name="{name}"', None)
        self.out.append(json.dumps(value).encode() + b"\r\n")

    def _on_end(self) -> None:
        self.out.append(b"--" + self.boundary + b"--\r\n")
        self.ended = True


def _text(raw: bytes) -> str | None:
    """UTF-8 text without control characters, else None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if any(ord(c) < 32 or ord(c) == 127 for c in text) else text


def _form_value(text: str | None) -> str | None:
    """A text field's value: BentoML's own client sends values JSON-encoded (``"a"``)."""
    if text is None:
        return None
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def _check_filename(raw: bytes) -> None:
    # The name is never used (the part is renamed), but it is client metadata: refuse what no
    # real file name is, rather than guess.
    if len(raw) > _MAX_FILENAME_BYTES or _text(raw) is None:
        raise _Refused(
            Refusal.BAD_REQUEST,
            f"invalid upload filename: send a UTF-8 name without control characters, at most "
            f"{_MAX_FILENAME_BYTES} bytes (the service does not use it)",
        )


def _check_content_type(raw: bytes | None) -> None:
    # Any declared type is accepted (the reader looks at the bytes), but it must be one.
    if raw is not None and (
        len(raw) > 255 or not _MEDIA_TYPE.match(raw.decode("latin-1")) or _text(raw) is None
    ):
        raise _Refused(
            Refusal.BAD_REQUEST,
            "invalid Content-Type on the file part: give a media type such as "
            "application/dicom or image/png, or none",
        )


# -- the middleware -----------------------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestGuard:
    """ASGI middleware: request ids, API key, rate limit, upload checks, uniform errors.

    Args:
        app: the ASGI app it wraps.
        settings: API key, body and image limits, in-flight limit, rate limit and
            ``Retry-After``; default :meth:`ServiceSettings.from_env`.
        on_refusal: called with ``(reason, status)`` for every refusal it sends or rewrites
            (metrics); default: nothing.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: ServiceSettings | None = None,
        on_refusal: RefusalHook | None = None,
    ) -> None:
        self.app = app
        self.settings = settings or ServiceSettings.from_env()
        self.on_refusal = on_refusal
        self.limiter = (
            RateLimiter(self.settings.rate_limit_per_min, self.settings.rate_limit_burst)
            if self.settings.rate_limited
            else None
        )
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        token = _REQUEST_ID.set(request_id)
        responder = _Responder(send, request_id, self.settings.retry_after_s, self.on_refusal)
        try:
            await self._handle(scope, receive, responder)
        finally:
            _REQUEST_ID.reset(token)

    async def _handle(self, scope: Scope, receive: Receive, responder: _Responder) -> None:
        path = scope.get("path", "")
        form = UPLOAD_FORMS.get(path) if scope.get("method") == "POST" else None
        try:
            # The web page's static files hold no data: they load without the key, and the page
            # asks for it (it sends it with every call).
            page = path.startswith(PAGE_PREFIX) and scope.get("method") in _BODILESS
            if path not in OPEN_PATHS and not page:
                self._authorise(scope)
                self._rate_limit(scope)
            content_type = _header(scope, b"content-type") or ""
            if form is None:
                if _is_multipart(content_type) and "boundary=" not in content_type:
                    # BentoML's parser fails on this with a 500, on every route.
                    raise _Refused(
                        Refusal.BAD_REQUEST, f"multipart/form-data without a boundary; {USAGE}"
                    )
                if scope.get("method") not in _BODILESS and path not in OPEN_PATHS:
                    # BentoML reads any body whole into memory, on every route.
                    body = b"".join([chunk async for chunk in self._limited_body(scope, receive)])
                    receive = _replay(body)
                await self._call_app(scope, receive, responder)
                return
            if self.in_flight >= self.settings.max_in_flight:
                raise _Refused(
                    Refusal.OVERLOADED,
                    f"the service is at capacity ({self.in_flight} uploads in progress in this "
                    f"worker); retry after {self.settings.retry_after_s} s",
                )
        except _Refused as refused:
            await responder.refuse(refused)
            return
        self.in_flight += 1
        try:
            try:
                scope, receive = await self._read_upload(scope, receive, form, content_type)
            except _Refused as refused:
                await responder.refuse(refused)
                return
            await self._call_app(scope, receive, responder)
        finally:
            self.in_flight -= 1

    async def _call_app(self, scope: Scope, receive: Receive, responder: _Responder) -> None:
        try:
            await self.app(scope, receive, responder.send)
        except Exception:
            log.exception("request %s failed", responder.request_id)
            if responder.started:
                raise  # nothing left to say: the server closes the connection
            await responder.refuse(
                _Refused(
                    Refusal.INTERNAL_ERROR,
                    f"the service failed on this request (logged as request "
                    f"{responder.request_id}); retry later, and report the request id if it "
                    "persists",
                )
            )

    def _authorise(self, scope: Scope) -> None:
        key = self.settings.api_key
        if key is None:
            return
        sent = _header(scope, b"x-api-key")
        authorization = _header(scope, b"authorization") or ""
        if authorization[:7].lower() == "bearer ":
            sent = authorization[7:].strip()
        if sent is None or not hmac.compare_digest(sent.encode("utf-8"), key.encode("utf-8")):
            raise _Refused(
                Refusal.UNAUTHORIZED,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>' or "
                "'X-API-Key: <key>' with the key the operator set in CXR_TRIAGE_API_KEY",
                {"WWW-Authenticate": "Bearer"},
            )

    def _rate_limit(self, scope: Scope) -> None:
        if self.limiter is None:
            return
        if self.settings.api_key is not None:
            # Authorised already: the client is its key (hashed: no secret kept in memory).
            client = "key:" + hashlib.sha256(self.settings.api_key.encode()).hexdigest()[:16]
        else:
            peer = scope.get("client") or ("unknown", 0)
            client = f"addr:{peer[0]}"
        wait = self.limiter.acquire(client)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise _Refused(
                Refusal.RATE_LIMITED,
                f"too many requests from this client (limit {self.settings.rate_limit_per_min:g} "
                f"per minute, burst {self.settings.rate_limit_burst}); retry after {seconds} s",
                {"Retry-After": str(seconds)},
            )

    async def _limited_body(self, scope: Scope, receive: Receive) -> Any:
        """The body's chunks; :class:`_Refused` 413 once it passes the limit."""
        limit = self.settings.max_body_bytes
        too_large = _Refused(
            Refusal.BODY_TOO_LARGE,
            f"request body larger than the limit of {self.settings.max_body_mb:g} MB; send one "
            "image at a time or a smaller file (operators: CXR_TRIAGE_MAX_BODY_MB)",
        )
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large
        size = 0
        async for chunk in _body_chunks(receive):
            size += len(chunk)
            if size > limit:
                raise too_large
            yield chunk

    async def _read_upload(
        self, scope: Scope, receive: Receive, form: UploadForm, content_type: str
    ) -> tuple[Scope, Receive]:
        """Read, check and rewrite an upload; the scope and body the app gets instead."""
        rewriter: _FormRewriter | None = None
        if _is_multipart(content_type):
            boundary = _boundary(content_type)
            rewriter = _FormRewriter(form, boundary, self.settings.max_images)
        size = 0
        async for chunk in self._limited_body(scope, receive):
            size += len(chunk)
            if rewriter is not None:
                rewriter.write(chunk)
        if size == 0:
            raise _Refused(Refusal.BAD_REQUEST, f"empty request body; {USAGE}")
        if rewriter is None:
            raise _Refused(
                Refusal.UNSUPPORTED_MEDIA_TYPE,
                f"unsupported content type {content_type or '(none)'!r}; {USAGE}",
            )
        body = rewriter.finish()
        if rewriter.files == 0:
            what = (
                "no images in the request" if form.many else f"no file field {form.file_field!r}"
            )
            raise _Refused(Refusal.BAD_REQUEST, f"{what}; {USAGE}")
        headers = [
            (k, v)
            for k, v in scope.get("headers", [])
            if k.lower() not in (b"content-length", b"transfer-encoding")
        ]
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        return {**scope, "headers": headers}, _replay(body)


def _is_multipart(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "multipart/form-data"


def _boundary(content_type: str) -> bytes:
    from python_multipart.multipart import parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"").decode("latin-1")
    if not _BOUNDARY.match(boundary):
        raise _Refused(
            Refusal.BAD_REQUEST,
            f"multipart/form-data without a valid boundary (1-70 characters); {USAGE}",
        )
    return boundary.encode("latin-1")


async def _body_chunks(receive: Receive) -> Any:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


# -- answers ------------------------------------------------------------------------------------


class _Responder:
    """Wraps ``send``: one request-id header, uniform error bodies, ``Retry-After``."""

    def __init__(
        self, send: Send, request_id: str, retry_after_s: int, on_refusal: RefusalHook | None
    ) -> None:
        self._send = send
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.on_refusal = on_refusal
        self.started = False
        self._held: Message | None = None
        self._chunks: list[bytes] = []

    async def refuse(self, refused: _Refused) -> None:
        status = refused.refusal.status
        body = error_body(status, refused.message, refused.refusal.reason, self.request_id)
        await self._send_json(status, body, refused.headers)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] >= 400 and not _is_dicom_json(message):
                self._held = message  # rewritten once its body is complete
                return
            self.started = True
            await self._send({**message, "headers": self._headers(message.get("headers", []))})
            return
        if self._held is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self._chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        start, raw = self._held, b"".join(self._chunks)
        self._held, self._chunks = None, []
        status, body = _uniform(start["status"], raw, self.request_id)
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in start.get("headers", [])
            if k.lower() not in _REPLACED_HEADERS
        }
        await self._send_json(status, body, headers)

    def _headers(self, raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        kept = [(k, v) for k, v in raw if k.lower() not in _DROPPED_HEADERS]
        kept.append((b"x-request-id", self.request_id.encode("latin-1")))
        return kept

    async def _send_json(
        self, status: int, body: dict[str, Any], headers: Mapping[str, str]
    ) -> None:
        if self.on_refusal is not None:
            self.on_refusal(str(body.get("reason")), status)
        extra = {k.lower(): v for k, v in headers.items()}
        if status in RETRY_AFTER_STATUSES:
            extra.setdefault("retry-after", str(self.retry_after_s))
        payload = json.dumps(body).encode("utf-8")
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode("latin-1")),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()),
        ]
        self.started = True
        await self._send(
            {"type": "http.response.start", "status": status, "headers": self._headers(raw)}
        )
        await self._send({"type": "http.response.body", "body": payload, "more_body": False})


def _is_dicom_json(start: Message) -> bool:
    """A PS3.18 answer (STOW-RS 409 with its FailedSOPSequence): passed as it is."""
    for key, value in start.get("headers", []):
        if key.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/dicom+json"
    return False


_FOREIGN_REASONS = {
    404: Refusal.NOT_FOUND,
    405: Refusal.METHOD_NOT_ALLOWED,
    413: Refusal.BODY_TOO_LARGE,
    415: Refusal.UNSUPPORTED_MEDIA_TYPE,
    429: Refusal.RATE_LIMITED,
}


def _uniform(status: int, raw: bytes, request_id: str) -> tuple[int, dict[str, Any]]:
    """The status and uniform body of an error answer (the service's own pass unchanged)."""
    try:
        original: Any = json.loads(raw)
    except ValueError:
        original = raw.decode("utf-8", "replace")
    ours = isinstance(original, dict) and "reason" in original and "request_id" in original
    if ours and (status < 500 or status == 503):
        return status, original
    if status == 503:  # BentoML's own: a dependency refused or was not ready
        refusal = Refusal.OVERLOADED
        message = "the service is overloaded; retry later"
    elif status >= 500:
        refusal = Refusal.INTERNAL_ERROR
        message = (
            f"the service failed on this request (logged as request {request_id}); retry "
            "later, and report the request id if it persists"
        )
    else:
        refusal = _FOREIGN_REASONS.get(status, Refusal.BAD_REQUEST)
        if isinstance(original, list) and len(original) == 1:
            original = original[0]
        detail = original.get("error", original) if isinstance(original, dict) else original
        extra = original.get("detail") if isinstance(original, dict) else None
        if extra and extra != detail:
            detail = f"{detail}: {json.dumps(extra)[:500]}"
        message = f"invalid request ({detail}); {USAGE}"
        return status, error_body(status, message, refusal.reason, request_id)
    return refusal.status, error_body(refusal.status, message, refusal.reason, request_id)
