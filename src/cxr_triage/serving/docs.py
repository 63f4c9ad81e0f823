"""The service's API surface: its OpenAPI document and a docs page without external assets.

BentoML's own document is boilerplate (title ``cxr-triage``, version "None", "Contact BentoML
Team", only 400/404/500 responses) and its docs page loads Google Tag Manager from the internet
and Swagger UI's validator badge from validator.swagger.io. :func:`product_openapi` rewrites the
document: title, the model tag as version, a description with the disclaimer and the error
table, every error response each route can give with the ``ErrorResponse`` schema and its
headers, and the API-key schemes. :class:`ApiDocs` (ASGI middleware) serves that document on
``/docs.json`` and a small page on ``/`` and ``/docs`` that loads Swagger UI from the files
BentoML ships (``/static_content``), with the validator off. Nothing here imports BentoML.
"""

from __future__ import annotations

import copy
import html
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cxr_triage.serving.refusals import ErrorResponse, Refusal, image_refusals
from cxr_triage.serving.settings import ServiceSettings
from cxr_triage.vocabulary import NOT_FOR_CLINICAL_USE

__all__ = ["ApiDocs", "ROUTE_ERRORS", "docs_page", "error_table", "product_openapi"]

log = logging.getLogger(__name__)

TITLE = "cxr-triage: chest X-ray Normal/Abnormal triage"
DOCS_PATHS = frozenset({"/", "/docs"})
SPEC_PATH = "/docs.json"

_ALWAYS = (
    Refusal.UNAUTHORIZED,
    Refusal.RATE_LIMITED,
    Refusal.OVERLOADED,
    Refusal.INTERNAL_ERROR,
)
_UPLOAD = (
    Refusal.BAD_REQUEST,
    Refusal.BODY_TOO_LARGE,
    Refusal.UNSUPPORTED_MEDIA_TYPE,
    Refusal.SCORER_UNAVAILABLE,
    Refusal.MODEL_MISMATCH,
    Refusal.PREDICTION_LOG_UNAVAILABLE,
)
# route -> (the service's refusals it can give, whether image refusals are its own status)
ROUTE_ERRORS: Mapping[str, tuple[tuple[Refusal, ...], bool]] = {
    "/predict": ((*_UPLOAD, *_ALWAYS), True),
    "/predict_batch": ((*_UPLOAD, Refusal.TOO_MANY_IMAGES, *_ALWAYS), False),
    "/explain": (
        (Refusal.BAD_REQUEST, Refusal.BODY_TOO_LARGE, Refusal.UNSUPPORTED_MEDIA_TYPE, *_ALWAYS),
        True,
    ),
    "/similar": (
        (Refusal.BAD_REQUEST, Refusal.BODY_TOO_LARGE, Refusal.UNSUPPORTED_MEDIA_TYPE, *_ALWAYS),
        True,
    ),
    "/model_info": (_ALWAYS, False),
    "/feedback": ((Refusal.BAD_REQUEST, Refusal.PREDICTION_LOG_UNAVAILABLE, *_ALWAYS), False),
}


def _reasons_by_status(
    refusals: Iterable[Refusal], with_images: bool
) -> dict[int, list[tuple[str, str]]]:
    by_status: dict[int, list[tuple[str, str]]] = {}
    for refusal in refusals:
        by_status.setdefault(refusal.status, []).append((refusal.reason, refusal.when))
    if with_images:
        for reason, status, when in image_refusals():
            by_status.setdefault(status, []).append((reason, when))
    return dict(sorted(by_status.items()))


def error_table() -> str:
    """The error table (Markdown): every status, reason and when it is given."""
    rows = [(r.status, r.reason, r.when) for r in Refusal]
    rows += [(s, r, f"this image: {w}") for r, s, w in image_refusals()]
    lines = ["| status | reason | when |", "|---|---|---|"]
    lines += [f"| {s} | `{r}` | {w} |" for s, r, w in sorted(rows, key=lambda x: (x[0], x[1]))]
    return "\n".join(lines)


def _description(model_tag: str | None, settings: ServiceSettings) -> str:
    auth = (
        "Every route except `/healthz`, `/livez`, `/readyz` and `/metrics` (this page "
        "included) needs the API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`."
        if settings.api_key is not None
        else "No API key is configured on this server (operators: `CXR_TRIAGE_API_KEY`)."
    )
    return f"""**{NOT_FOR_CLINICAL_USE}** This service is a research triage signal for chest
radiographs. It is not a medical device and must not be used for clinical decisions.

Model: `{model_tag or "unknown"}`. Each answer gives the calibrated probability of
*abnormal*, the label at the model's operating threshold, the threshold, the model tag and the
disclaimer. Every prediction is written to the prediction log before it is answered.

Send `multipart/form-data`: the file in field `image` to `/predict`, or one field `images` per
file to `/predict_batch` (at most {settings.max_images}); optionally `site` (1-64 letters,
digits, `.`, `_` or `-`). DICOM (CR/DX chest), PNG or JPEG. Example:
`curl -F image=@chest.dcm -F site=hospital_a http://127.0.0.1:3000/predict`.

{auth}

Every answer has an `X-Request-ID` header. Every error body is
`{{"error", "reason", "request_id", "status"}}`; 429 and 503 carry `Retry-After`. In a batch,
each file gets its own result: 200 with a prediction, or the error that file alone would get
from `/predict`; one bad file never fails the others.

{error_table()}
"""


def _error_response(status: int, reasons: list[tuple[str, str]]) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "X-Request-ID": {"description": "this request's id", "schema": {"type": "string"}}
    }
    if status in (429, 503):
        headers["Retry-After"] = {
            "description": "seconds to wait before retrying",
            "schema": {"type": "integer"},
        }
    if status == 401:
        headers["WWW-Authenticate"] = {"schema": {"type": "string"}}
    return {
        "description": "; ".join(f"`{reason}`: {when}" for reason, when in reasons),
        "headers": headers,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
        },
    }


def product_openapi(
    base: Mapping[str, Any], model_tag: str | None, settings: ServiceSettings
) -> dict[str, Any]:
    """BentoML's OpenAPI document of the service, made this product's (see the module doc).

    Args:
        base: ``Service.openapi_spec.asdict()``.
        model_tag: the model this server serves (the document's version).
        settings: for the limits and whether an API key is set.
    """
    spec = json.loads(json.dumps(copy.deepcopy(dict(base)), default=str))
    spec["info"] = {
        "title": TITLE,
        "version": model_tag or "unknown",
        "description": _description(model_tag, settings),
        "license": {"name": "Apache-2.0"},
    }
    tag_descriptions = {
        "Service APIs": f"Triage of chest radiographs. {NOT_FOR_CLINICAL_USE}",
        "Infrastructure": "Probes and Prometheus metrics (no API key needed)",
    }
    for tag in spec.get("tags", []):
        tag["description"] = tag_descriptions.get(tag.get("name"), tag.get("description", ""))
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for stale in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(stale, None)
    schemas["ErrorResponse"] = ErrorResponse.model_json_schema()
    if settings.api_key is not None:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    request_id = {"X-Request-ID": {"schema": {"type": "string"}}}
    for route, (refusals, with_images) in ROUTE_ERRORS.items():
        operation = spec.get("paths", {}).get(route, {}).get("post")
        if operation is None:
            continue
        ok = dict(operation.get("responses", {}).get("200", {}))
        ok.setdefault("headers", {}).update(request_id)
        responses: dict[str, Any] = {"200": ok}
        for status, reasons in _reasons_by_status(refusals, with_images).items():
            responses[str(status)] = _error_response(status, reasons)
        operation["responses"] = responses
        if settings.api_key is not None:
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
    return spec


def docs_page() -> bytes:
    """The docs page: the disclaimer, then Swagger UI from BentoML's bundled files."""
    banner = html.escape(NOT_FOR_CLINICAL_USE)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cxr-triage API (not for clinical use)</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="./static_content/swagger-ui.css">
<style>
  body {{ margin: 0; font-family: sans-serif; background: #fafafa; }}
  #disclaimer {{ background: #8a1c1c; color: #fff; padding: 12px 24px; font-size: 16px; }}
</style>
</head>
<body>
<div id="disclaimer"><strong>cxr-triage</strong>: chest X-ray Normal/Abnormal triage.
<strong>{banner}</strong></div>
<div id="swagger-ui"></div>
<script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true,
  validatorUrl: null, presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"
}});
</script>
</body>
</html>
""".encode()


Describe = Callable[[], tuple[Mapping[str, Any], "str | None"]]


class ApiDocs:
    """ASGI middleware serving the product's OpenAPI document and docs page.

    Args:
        app: the ASGI app it wraps (every other request passes through).
        describe: returns BentoML's document of the service and the model tag served; called
            on the first request for the document (the model is known once the service
            started), then cached.
        settings: default :meth:`ServiceSettings.from_env`.
    """

    def __init__(
        self, app: Any, *, describe: Describe, settings: ServiceSettings | None = None
    ) -> None:
        self.app = app
        self.describe = describe
        self.settings = settings or ServiceSettings.from_env()
        self._spec: bytes | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
        elif path in DOCS_PATHS:
            await _send(send, docs_page(), "text/html; charset=utf-8")
        elif path == SPEC_PATH:
            await _send(send, self._document(), "application/json")
        else:
            await self.app(scope, receive, send)

    def _document(self) -> bytes:
        if self._spec is None:
            base, model_tag = self.describe()
            spec = product_openapi(base, model_tag, self.settings)
            document = json.dumps(spec).encode()
            if model_tag is None:
                return document  # not started yet: ask again next time
            self._spec = document
        return self._spec


async def _send(send: Any, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
