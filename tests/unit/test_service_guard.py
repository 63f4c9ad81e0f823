"""The request guard against a stub ASGI app (no BentoML): what reaches the app, what is refused.

The stub parses what it receives with Starlette's form parser, the one BentoML uses, so the
tests see the upload as the service would: its filename, content type, bytes and form values.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cxr_triage.serving.guard import RateLimiter, RequestGuard
from cxr_triage.serving.settings import ServiceSettings

KEY = "k" * 20
DICOM_BYTES = b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4


class Stub:
    """An ASGI app recording each request's scope, form and body; answers ``answer``."""

    def __init__(self, answer: Callable[..., Any] | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answer = answer

    async def __call__(self, scope, receive, send) -> None:
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        request = Request(scope, receive)
        record: dict[str, Any] = {"path": scope["path"], "headers": dict(request.headers)}
        if request.headers.get("content-type", "").startswith("multipart/"):
            form = await request.form()
            record["form"] = [
                (
                    name,
                    (value.filename, value.content_type, await value.read())
                    if hasattr(value, "filename")
                    else value,
                )
                for name, value in form.multi_items()
            ]
        else:
            record["body"] = await request.body()
        self.seen.append(record)
        if self.answer is not None:
            await self.answer(scope, receive, send)
            return
        response = JSONResponse({"ok": True}, headers={"X-BentoML-Request-ID": "123"})
        await response(scope, receive, send)


def _settings(**overrides: Any) -> ServiceSettings:
    return ServiceSettings(**{"max_body_mb": 1.0, "max_images": 3, **overrides})


def _request(
    app: Any,
    method: str,
    path: str,
    *,
    client: tuple[str, int] = ("127.0.0.1", 5000),
    **kwargs: Any,
) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.request(method, path, **kwargs)

    return asyncio.run(run())


def _refused(response: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["reason"] == reason and body["status"] == status, body
    assert body["request_id"] == response.headers["x-request-id"]
    assert len(body["error"]) > 20
    return body


def _multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"b0undary") -> bytes:
    """A raw multipart body from (headers, data) parts: for what httpx will not send."""
    out = b""
    for headers, data in parts:
        out += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


MULTIPART = {"Content-Type": "multipart/form-data; boundary=b0undary"}


# -- request ids, API key, rate limit ----------------------------------------------------------


def test_guard_gives_one_request_id_header_and_drops_bentomls() -> None:
    guard = RequestGuard(Stub(), settings=_settings())
    response = _request(guard, "POST", "/model_info")
    assert response.status_code == 200
    ids = [k for k in response.headers if "request-id" in k.lower()]
    assert ids == ["x-request-id"] and len(response.headers["x-request-id"]) == 32


def test_guard_api_key_guards_every_route_but_probes_and_metrics() -> None:
    stub = Stub()
    guard = RequestGuard(stub, settings=_settings(api_key=KEY))
    for path in ("/healthz", "/livez", "/readyz", "/metrics"):
        assert _request(guard, "GET", path).status_code == 200, path
    for method, path in [
        ("GET", "/"),
        ("GET", "/docs"),
        ("GET", "/docs.json"),
        ("GET", "/static_content/swagger-ui.css"),
        ("POST", "/model_info"),
        ("POST", "/predict"),
    ]:
        response = _request(guard, method, path)
        _refused(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    _refused(
        _request(guard, "POST", "/model_info", headers={"Authorization": "Bearer nope"}),
        401,
        "unauthorized",
    )
    assert len(stub.seen) == 4  # the probes only
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
        assert _request(guard, "POST", "/model_info", headers=headers).status_code == 200


def test_guard_rate_limit_answers_429_with_retry_after_per_client() -> None:
    guard = RequestGuard(Stub(), settings=_settings(rate_limit_per_min=6, rate_limit_burst=2))
    a, b = ("10.0.0.1", 1), ("10.0.0.2", 1)
    assert [_request(guard, "POST", "/model_info", client=a).status_code for _ in range(2)] == [
        200,
        200,
    ]
    limited = _request(guard, "POST", "/model_info", client=a)
    _refused(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 10  # 6 per minute: one every 10 s
    assert _request(guard, "POST", "/model_info", client=b).status_code == 200  # its own bucket
    assert _request(guard, "GET", "/healthz", client=a).status_code == 200  # probes never


def test_guard_rate_limit_off_by_default_and_keyed_by_api_key() -> None:
    guard = RequestGuard(Stub(), settings=_settings())
    assert guard.limiter is None
    keyed = RequestGuard(
        Stub(), settings=_settings(api_key=KEY, rate_limit_per_min=60, rate_limit_burst=1)
    )
    auth = {"X-API-Key": KEY}
    first = _request(keyed, "POST", "/model_info", client=("10.0.0.1", 1), headers=auth)
    # Another address with the same key is the same client.
    second = _request(keyed, "POST", "/model_info", client=("10.0.0.9", 1), headers=auth)
    assert first.status_code == 200
    _refused(second, 429, "rate_limited")


def test_rate_limiter_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=30, burst=2, clock=lambda: now[0])
    assert limiter.acquire("c") == 0 and limiter.acquire("c") == 0
    assert limiter.acquire("c") == pytest.approx(2.0)  # 30/min: one token every 2 s
    now[0] = 2.0
    assert limiter.acquire("c") == 0
    assert limiter.acquire("c") > 0


# -- body limits and upload checks --------------------------------------------------------------


def test_guard_refuses_oversize_bodies_declared_or_chunked() -> None:
    guard = RequestGuard(Stub(), settings=_settings())

    async def chunks():  # no Content-Length: streamed
        yield b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'
        for _ in range(3):
            yield b"x" * 600_000

    declared = _request(guard, "POST", "/predict", files={"image": ("a.dcm", bytes(2**20 + 1))})
    _refused(declared, 413, "body_too_large")
    chunked = _request(guard, "POST", "/predict", content=chunks(), headers=MULTIPART)
    _refused(chunked, 413, "body_too_large")


def test_guard_limits_the_body_on_every_route_and_passes_small_ones_on() -> None:
    stub = Stub()
    guard = RequestGuard(stub, settings=_settings())

    async def chunks():
        for _ in range(3):
            yield b"x" * 600_000

    _refused(_request(guard, "POST", "/model_info", content=chunks()), 413, "body_too_large")
    assert stub.seen == []
    small = _request(guard, "POST", "/model_info", json={"a": 1})
    assert small.status_code == 200 and stub.seen[0]["body"] == b'{"a":1}'


BAD_UPLOADS: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "empty body": ("/predict", {"content": b""}, 400, "bad_request"),
    "json": ("/predict", {"json": {"image": "chest.dcm"}}, 415, "unsupported_media_type"),
    "raw bytes": (
        "/predict",
        {"content": b"\x00" * 10, "headers": {"Content-Type": "application/octet-stream"}},
        415,
        "unsupported_media_type",
    ),
    "no boundary": (
        "/predict",
        {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "bad_request",
    ),
    "no file field": ("/predict", {"files": {"site": (None, "hospital_a")}}, 400, "bad_request"),
    "text instead of a file": (
        "/predict",
        {"files": {"image": (None, "http://example.com/chest.png")}},
        400,
        "bad_request",
    ),
    "two files in image": (
        "/predict",
        {"files": [("image", ("a.dcm", b"1")), ("image", ("b.dcm", b"2"))]},
        400,
        "bad_request",
    ),
    "too many images": (
        "/predict_batch",
        {"files": [("images", (f"{i}.dcm", b"1")) for i in range(4)]},
        413,
        "too_many_images",
    ),
    "empty batch": ("/predict_batch", {"files": {"site": (None, "a")}}, 400, "bad_request"),
    "unknown field": (
        "/predict",
        {"files": {"image": ("a.dcm", b"1"), "patient_name": (None, "Doe")}},
        400,
        "bad_request",
    ),
    "site as a file": (
        "/predict",
        {"files": {"image": ("a.dcm", b"1"), "site": ("site.txt", b"hospital_a")}},
        400,
        "bad_request",
    ),
    "invalid site": (
        "/predict",
        {"files": {"image": ("a.dcm", b"1"), "site": (None, "bad site!")}},
        400,
        "bad_request",
    ),
    "long site": (
        "/predict",
        {"files": {"image": ("a.dcm", b"1"), "site": (None, "x" * 65)}},
        400,
        "bad_request",
    ),
    "site twice": (
        "/predict",
        {"files": [("image", ("a.dcm", b"1")), ("site", (None, "a")), ("site", (None, "b"))]},
        400,
        "bad_request",
    ),
    "truncated multipart": (
        "/predict",
        {
            "content": b'--b0undary\r\nContent-Disposition: form-data; name="image"; '
            b'filename="a.dcm"\r\n\r\nDATA',
            "headers": MULTIPART,
        },
        400,
        "bad_request",
    ),
    "not multipart inside": (
        "/predict",
        {"content": b"garbage without any boundary", "headers": MULTIPART},
        400,
        "bad_request",
    ),
    "filename with a control character": (
        "/predict",
        {
            "content": _multipart(
                [(b'Content-Disposition: form-data; name="image"; filename="a\x01.dcm"', b"1")]
            ),
            "headers": MULTIPART,
        },
        400,
        "bad_request",
    ),
    "filename not UTF-8": (
        "/predict",
        {
            "content": _multipart(
                [(b'Content-Disposition: form-data; name="image"; filename="\xff\xfe.dcm"', b"1")]
            ),
            "headers": MULTIPART,
        },
        400,
        "bad_request",
    ),
    "filename over 1024 bytes": (
        "/predict",
        {"files": {"image": ("a" * 1100 + ".dcm", b"1")}},
        400,
        "bad_request",
    ),
    "part content type not a media type": (
        "/predict",
        {
            "content": _multipart(
                [
                    (
                        b'Content-Disposition: form-data; name="image"; filename="a.dcm"\r\n'
                        b"Content-Type: not a type",
                        b"1",
                    )
                ]
            ),
            "headers": MULTIPART,
        },
        400,
        "bad_request",
    ),
    "part without a name": (
        "/predict",
        {
            "content": _multipart([(b"Content-Disposition: form-data", b"1")]),
            "headers": MULTIPART,
        },
        400,
        "bad_request",
    ),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_guard_refuses_bad_uploads_before_the_app(case: str) -> None:
    path, request, status, reason = BAD_UPLOADS[case]
    stub = Stub()
    guard = RequestGuard(stub, settings=_settings())
    _refused(_request(guard, "POST", path, **request), status, reason)
    assert stub.seen == []


def test_guard_refuses_multipart_without_boundary_on_every_route() -> None:
    guard = RequestGuard(Stub(), settings=_settings())
    response = _request(
        guard, "POST", "/model_info", content=b"x", headers={"Content-Type": "multipart/form-data"}
    )
    _refused(response, 400, "bad_request")


# -- what the app receives ----------------------------------------------------------------------

HANGUL_NAME = "흉" * 78 + "_chest-xray-1.dcm"  # 95 characters, 251 UTF-8 bytes


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("a" * 250 + ".dcm", "application/dicom"),  # S1: 254 bytes
        (HANGUL_NAME, "application/dicom"),  # S2
        ("../../etc/passwd/chest.dcm", "application/dicom"),  # S3: separators
        ("흉부.dcm", "application/dicom"),  # S4
        ("chest.dcm", "text/plain"),  # S6: a DICOM sent as text
    ],
)
def test_guard_client_metadata_never_reaches_the_app(filename: str, content_type: str) -> None:
    assert len(HANGUL_NAME) == 95 and len(HANGUL_NAME.encode()) == 251
    stub = Stub()
    guard = RequestGuard(stub, settings=_settings())
    files = {"image": (filename, DICOM_BYTES, content_type), "site": (None, "hospital_a")}
    response = _request(guard, "POST", "/predict", files=files)
    assert response.status_code == 200, response.text
    (seen,) = stub.seen
    form = dict(seen["form"])
    assert form["image"] == ("upload-0", "application/octet-stream", DICOM_BYTES)
    assert json.loads(form["site"]) == "hospital_a"  # a JSON string: BentoML decodes values
    assert int(seen["headers"]["content-length"]) > len(DICOM_BYTES)


def test_guard_empty_filename_is_still_a_file_part() -> None:
    stub = Stub()
    guard = RequestGuard(stub, settings=_settings())
    body = _multipart([(b'Content-Disposition: form-data; name="image"; filename=""', b"1")])
    assert _request(guard, "POST", "/predict", content=body, headers=MULTIPART).status_code == 200
    assert dict(stub.seen[0]["form"])["image"][0] == "upload-0"


def test_guard_batch_parts_are_renamed_in_order_and_bytes_kept() -> None:
    stub = Stub()
    guard = RequestGuard(stub, settings=_settings())
    payloads = [b"first", b"", DICOM_BYTES]  # an empty file is the reader's to refuse
    files = [("images", ("x" * 300, p)) for p in payloads] + [("site", (None, "7"))]
    response = _request(guard, "POST", "/predict_batch", files=files)
    assert response.status_code == 200, response.text
    form = stub.seen[0]["form"]
    assert [v[0] for n, v in form if n == "images"] == ["upload-0", "upload-1", "upload-2"]
    assert [v[2] for n, v in form if n == "images"] == payloads
    assert json.loads(dict(form)["site"]) == "7"  # stays the string "7"


def test_guard_accepts_json_encoded_values_as_bentomls_client_sends_them() -> None:
    stub = Stub()
    guard = RequestGuard(stub, settings=_settings())
    files = {"image": ("a.dcm", b"1"), "site": (None, '"hospital_a"')}
    assert _request(guard, "POST", "/predict", files=files).status_code == 200
    assert json.loads(dict(stub.seen[0]["form"])["site"]) == "hospital_a"
    bad = {"image": ("a.dcm", b"1"), "site": (None, '"bad site!"')}
    _refused(_request(guard, "POST", "/predict", files=bad), 400, "bad_request")


def test_guard_empty_site_is_the_same_as_none() -> None:
    stub = Stub()
    guard = RequestGuard(stub, settings=_settings())
    files = {"image": ("a.dcm", b"1"), "site": (None, "")}
    assert _request(guard, "POST", "/predict", files=files).status_code == 200
    assert [name for name, _ in stub.seen[0]["form"]] == ["image"]


def test_guard_passes_a_chunked_body_on_whole() -> None:
    stub = Stub()
    guard = RequestGuard(stub, settings=_settings())
    body = _multipart(
        [(b'Content-Disposition: form-data; name="image"; filename="a.png"', DICOM_BYTES)]
    )

    async def chunks():
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    response = _request(guard, "POST", "/predict", content=chunks(), headers=MULTIPART)
    assert response.status_code == 200
    assert dict(stub.seen[0]["form"])["image"][2] == DICOM_BYTES


# -- answers: uniform errors, Retry-After, no 500 -----------------------------------------------


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Callable[..., Any]:
    async def answer(scope, receive, send) -> None:
        from starlette.responses import JSONResponse

        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)

    return answer


def test_guard_rewrites_bentomls_error_bodies_into_the_uniform_shape() -> None:
    validation = _answer(
        400, [{"error": "1 validation error for Input", "detail": [{"loc": ["site"]}]}]
    )
    guard = RequestGuard(Stub(validation), settings=_settings())
    body = _refused(_request(guard, "POST", "/model_info"), 400, "bad_request")
    assert "validation error" in body["error"] and "site" in body["error"]
    unexpected = {"error": "An unexpected error has occurred, please check the server log."}
    for status, reason, new_status in [(500, "internal_error", 503), (503, "overloaded", 503)]:
        guard = RequestGuard(Stub(_answer(status, unexpected)), settings=_settings())
        response = _request(guard, "POST", "/model_info")
        body = _refused(response, new_status, reason)
        assert "unexpected error" not in body["error"]
        assert response.headers["retry-after"] == "5"
    guard = RequestGuard(Stub(_answer(404, {"detail": "Not Found"})), settings=_settings())
    _refused(_request(guard, "GET", "/nowhere"), 404, "not_found")


def test_guard_keeps_the_services_own_errors_and_adds_retry_after() -> None:
    own = {"error": "the prediction log is full " * 2, "reason": "prediction_log_unavailable"}
    own |= {"request_id": "x", "status": 503}
    guard = RequestGuard(Stub(_answer(503, own)), settings=_settings(retry_after_s=7))
    response = _request(guard, "POST", "/model_info")
    assert response.status_code == 503 and response.json() == own
    assert response.headers["retry-after"] == "7"


def test_guard_answers_503_when_the_app_raises() -> None:
    async def crash(scope, receive, send) -> None:
        raise RuntimeError("a bug")

    guard = RequestGuard(Stub(crash), settings=_settings())
    response = _request(guard, "POST", "/model_info")
    _refused(response, 503, "internal_error")
    assert "retry-after" in response.headers


def test_guard_sheds_uploads_past_max_in_flight_with_a_typed_503() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(scope, receive, send) -> None:
        entered.set()
        await release.wait()
        await _answer(200, {"ok": True})(scope, receive, send)

    guard = RequestGuard(Stub(slow), settings=_settings(max_in_flight=1))
    upload = {"files": {"image": ("a.dcm", b"1")}}

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            first = asyncio.create_task(c.post("/predict", **upload))
            await entered.wait()
            shed = await c.post("/predict", **upload)
            release.set()
            return await first, shed, await c.post("/predict", **upload)

    first, shed, after = asyncio.run(run())
    assert first.status_code == 200 and after.status_code == 200
    _refused(shed, 503, "overloaded")
    assert shed.headers["retry-after"] == "5"
    assert guard.in_flight == 0


def test_guard_reports_every_refusal_it_sends() -> None:
    counted: list[tuple[str, int]] = []
    guard = RequestGuard(
        Stub(_answer(500, {"error": "x"})),
        settings=_settings(api_key=KEY),
        on_refusal=lambda reason, status: counted.append((reason, status)),
    )
    _request(guard, "POST", "/predict")
    _request(guard, "POST", "/model_info", headers={"X-API-Key": KEY})
    assert counted == [("unauthorized", 401), ("internal_error", 503)]
