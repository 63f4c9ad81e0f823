"""Service settings from the environment, the refusal table, and the OpenAPI rewrite."""

from __future__ import annotations

import dataclasses
import re

import pytest

from cxr_triage.errors import ConfigError, ImageTooLargeError, NotAnImageError
from cxr_triage.serving.docs import ROUTE_ERRORS, docs_page, product_openapi
from cxr_triage.serving.refusals import Refusal, image_refusals, image_status
from cxr_triage.serving.settings import ServiceSettings
from helpers.pipeline import REPO


def test_service_settings_defaults_when_nothing_is_set() -> None:
    settings = ServiceSettings.from_env({"CXR_TRIAGE_API_KEY": "  ", "UNRELATED": "x"})
    assert settings == ServiceSettings()
    assert settings.api_key is None and settings.model_tag is None
    assert settings.max_body_bytes == 64 * 2**20 and not settings.rate_limited
    assert settings.request_timeout_s > settings.score_timeout_s


def test_service_settings_parse_every_variable() -> None:
    env = {
        "CXR_TRIAGE_MODEL_TAG": "cxr-triage:abc123",
        "CXR_TRIAGE_API_KEY": "s3cret-key-0123456789",
        "CXR_TRIAGE_MAX_BODY_MB": "0.5",
        "CXR_TRIAGE_MAX_IMAGES": "8",
        "CXR_TRIAGE_WORKERS": "3",
        "CXR_TRIAGE_THREADS": "4",
        "CXR_TRIAGE_SCORE_THREADS": "1",
        "CXR_TRIAGE_MAX_BATCH_SIZE": "16",
        "CXR_TRIAGE_MAX_LATENCY_MS": "250",
        "CXR_TRIAGE_MAX_IN_FLIGHT": "10",
        "CXR_TRIAGE_SCORE_TIMEOUT_S": "2.5",
        "CXR_TRIAGE_RETRY_AFTER_S": "9",
        "CXR_TRIAGE_RATE_LIMIT_PER_MIN": "120",
        "CXR_TRIAGE_RATE_LIMIT_BURST": "4",
    }
    settings = ServiceSettings.from_env(env)
    assert len(env) == len(dataclasses.fields(ServiceSettings))  # every variable covered
    assert settings.model_tag == "cxr-triage:abc123" and settings.workers == 3
    assert settings.max_body_bytes == 2**19 and settings.score_timeout_s == 2.5
    assert settings.rate_limited and settings.rate_limit_burst == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.workers = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CXR_TRIAGE_WORKERS", "two"),
        ("CXR_TRIAGE_WORKERS", "0"),
        ("CXR_TRIAGE_MAX_BATCH_SIZE", "1.5"),
        ("CXR_TRIAGE_MAX_BODY_MB", "-1"),
        ("CXR_TRIAGE_MAX_BODY_MB", "nan"),
        ("CXR_TRIAGE_SCORE_TIMEOUT_S", "0"),
        ("CXR_TRIAGE_RATE_LIMIT_PER_MIN", "-5"),
        ("CXR_TRIAGE_RATE_LIMIT_PER_MIN", "inf"),
        ("CXR_TRIAGE_API_KEY", "short"),
        ("CXR_TRIAGE_API_KEY", "a key with spaces in it"),
        ("CXR_TRIAGE_MODEL_TAG", "cxr triage:x"),
    ],
)
def test_service_settings_name_the_variable_that_is_wrong(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ServiceSettings.from_env({variable: value})


def test_refusals_have_unique_reasons_and_client_or_retry_statuses() -> None:
    reasons = [r.reason for r in Refusal]
    assert len(set(reasons)) == len(reasons)
    assert {r.status for r in Refusal} <= {400, 401, 404, 405, 413, 415, 429, 503}
    assert Refusal.OVERLOADED.status == 503 and Refusal.RATE_LIMITED.status == 429
    images = {reason: status for reason, status, _ in image_refusals()}
    assert images["not_an_image"] == 415 and images["wrong_modality"] == 422
    assert images["invalid_image"] == 422  # the reader's unforeseen failure
    assert not set(images) & set(reasons)


def test_image_status_comes_from_the_error_class() -> None:
    assert image_status(NotAnImageError("x")) == 415
    assert image_status(ImageTooLargeError("x")) == 413

    carried = NotAnImageError("x")
    carried.http_status = 418  # as the error classes carry it (no subclass: it would stay)
    assert image_status(carried) == 418


def _base_spec() -> dict:
    error = {"description": "e", "content": {"application/json": {"schema": {}}}}
    post = {
        "responses": {200: {"description": "ok"}, 400: error, 404: error, 500: error},
        "requestBody": {},
    }
    return {
        "openapi": "3.0.2",
        "info": {"title": "cxr-triage", "version": "None", "contact": {"name": "BentoML Team"}},
        "paths": {route: {"post": dict(post)} for route in ROUTE_ERRORS} | {"/healthz": {}},
        "components": {"schemas": {"InvalidArgument": {}, "NotFound": {}}},
    }


def test_product_openapi_documents_the_product_and_every_error() -> None:
    spec = product_openapi(_base_spec(), "cxr-triage:abc", ServiceSettings(api_key="k" * 16))
    info = spec["info"]
    assert info["version"] == "cxr-triage:abc" and "contact" not in info
    assert "not for clinical use" in info["description"].lower()
    for reason in [r.reason for r in Refusal] + [r for r, _, _ in image_refusals()]:
        assert f"`{reason}`" in info["description"], reason
    predict = spec["paths"]["/predict"]["post"]["responses"]
    assert set(predict) == {"200", "400", "401", "413", "415", "422", "429", "503"}
    batch = spec["paths"]["/predict_batch"]["post"]["responses"]
    assert set(batch) == {"200", "400", "401", "413", "415", "429", "503"}
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    assert predict["422"]["content"]["application/json"]["schema"] == ref
    assert "wrong_modality" in predict["422"]["description"]
    assert {"Retry-After", "X-Request-ID"} <= set(predict["503"]["headers"])
    assert "X-Request-ID" in predict["200"]["headers"]
    assert "ErrorResponse" in spec["components"]["schemas"]
    assert "NotFound" not in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"


def test_docs_page_loads_nothing_from_elsewhere() -> None:
    page = docs_page().decode()
    assert "not for clinical use" in page.lower()
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)""", page)
    assert urls and all(u.startswith(("./", "data:")) for u in urls), urls
    assert "validatorUrl: null" in page


def test_readme_error_table_lists_every_reason_with_its_status() -> None:
    readme = (REPO / "README.md").read_text()
    serving = readme[readme.index("## Serving") : readme.index("## Monitoring")]
    documented: dict[str, set[int]] = {}
    for line in serving.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 3 and re.fullmatch(r"[0-9, ]+", cells[0]):
            statuses = {int(s) for s in cells[0].split(",")}
            for reason in re.findall(r"`([a-z_]+)`", cells[1]):
                documented[reason] = statuses
    expected = {r.reason: r.status for r in Refusal}
    expected |= {reason: status for reason, status, _ in image_refusals()}
    for reason, status in expected.items():
        assert reason in documented, f"README's error table lacks {reason}"
        assert status in documented[reason], (reason, status, documented[reason])
