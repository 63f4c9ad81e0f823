"""The service's settings: every ``CXR_TRIAGE_*`` variable it reads, parsed and checked once.

:meth:`ServiceSettings.from_env` reads the environment and raises :class:`ConfigError` naming
the variable and what it must hold. BentoML takes a service's worker count and its batching
parameters when the class is defined, so :mod:`cxr_triage.serving.service` reads the settings
once when it is imported (an environment read, nothing else); the request guard and the
service instance read them again when they start.

=================================  =========  ===================================================
variable                           default    meaning
=================================  =========  ===================================================
``CXR_TRIAGE_MODEL_TAG``           (unset)    the model to serve; unset: the serving rule of
                                              :func:`~cxr_triage.inference.registry.resolve_package`
``CXR_TRIAGE_API_KEY``             (unset)    the key clients send (at least 16 characters);
                                              unset: no authentication
``CXR_TRIAGE_MAX_BODY_MB``         64         largest request body, chunked uploads included
``CXR_TRIAGE_MAX_IMAGES``          32         most files in one ``/predict_batch`` request
``CXR_TRIAGE_WORKERS``             1          front worker processes (decode, label, log)
``CXR_TRIAGE_THREADS``             2          decode threads per front worker
``CXR_TRIAGE_SCORE_THREADS``       2          onnxruntime threads in the scorer process
``CXR_TRIAGE_MAX_BATCH_SIZE``      32         most images in one network call
``CXR_TRIAGE_MAX_LATENCY_MS``      10000      BentoML's adaptive batching latency target: it
                                              refuses (503) what it predicts will take longer
``CXR_TRIAGE_MAX_IN_FLIGHT``       64         uploads one front worker holds at once; more are
                                              answered 503 ``overloaded`` at once
``CXR_TRIAGE_SCORE_TIMEOUT_S``     30         longest wait for the scorer before 503
                                              ``overloaded``
``CXR_TRIAGE_RETRY_AFTER_S``       5          ``Retry-After`` of 503 answers
``CXR_TRIAGE_RATE_LIMIT_PER_MIN``  0 (off)    requests per minute per client (its API key, else
                                              its address), per front worker
``CXR_TRIAGE_RATE_LIMIT_BURST``    10         requests a client may send at once above the rate
=================================  =========  ===================================================

The prediction log's place is not a service setting: it is the state folder's
(:func:`cxr_triage.state.state_layout`).
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, fields

from cxr_triage.errors import ConfigError

__all__ = ["ENV_PREFIX", "ServiceSettings"]

ENV_PREFIX = "CXR_TRIAGE_"
_MIN_API_KEY_LENGTH = 16
# A header value: printable ASCII without spaces (RFC 9110 token68 is narrower; this is enough
# to keep control characters and separators out of comparisons and logs).
_API_KEY_CHARS = frozenset(string.ascii_letters + string.digits + string.punctuation)


def _variable(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


@dataclass(frozen=True)
class ServiceSettings:
    """What the service is configured to do (see the module docstring for each variable).

    Construct it with :meth:`from_env`; the constructor takes the parsed values (tests).
    """

    model_tag: str | None = None
    api_key: str | None = None
    max_body_mb: float = 64.0
    max_images: int = 32
    workers: int = 1
    threads: int = 2
    score_threads: int = 2
    max_batch_size: int = 32
    # BentoML's default-like 1 s refused 72-96% of requests from 4 clients up on a busy 2-core
    # machine (README, Overload); overload is the in-flight limit's and score timeout's job.
    max_latency_ms: int = 10_000
    max_in_flight: int = 64
    score_timeout_s: float = 30.0
    retry_after_s: int = 5
    rate_limit_per_min: float = 0.0
    rate_limit_burst: int = 10

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def rate_limited(self) -> bool:
        return self.rate_limit_per_min > 0

    @property
    def request_timeout_s(self) -> float:
        """BentoML's own per-request timeout: a last resort, well after the service's own.

        BentoML answers it with an untyped 504 from outside the request guard, so it must
        never fire first: decoding is bounded by the pixel limits, the scorer wait by
        ``score_timeout_s``, and the prediction log's lock wait by its 30 s busy timeout.
        """
        return self.score_timeout_s + 90.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        """Parse the ``CXR_TRIAGE_*`` variables (unset or empty: the default).

        Raises:
            ConfigError: a variable is not a number, is out of range, or the API key is too
                short or holds spaces or control characters; the message names the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(_variable(f.name), "").strip()
            if raw:
                values[f.name] = raw
        parsed = {name: _parse(name, raw) for name, raw in values.items()}  # type: ignore[arg-type]
        return cls(**parsed)


_POSITIVE_INTS = {
    "max_images",
    "workers",
    "threads",
    "score_threads",
    "max_batch_size",
    "max_latency_ms",
    "max_in_flight",
    "retry_after_s",
    "rate_limit_burst",
}
_POSITIVE_FLOATS = {"max_body_mb", "score_timeout_s"}


def _parse(name: str, raw: str) -> object:
    variable = _variable(name)
    if name == "model_tag":
        if any(c.isspace() for c in raw) or raw.count(":") > 1:
            raise ConfigError(f"{variable}={raw!r} is not a model tag (name:version)")
        return raw
    if name == "api_key":
        if len(raw) < _MIN_API_KEY_LENGTH or not set(raw) <= _API_KEY_CHARS:
            raise ConfigError(
                f"{variable} must be at least {_MIN_API_KEY_LENGTH} printable ASCII characters "
                "without spaces (clients send it in a header); e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return raw
    if name in _POSITIVE_INTS:
        try:
            number = int(raw)
        except ValueError as exc:
            raise ConfigError(
                f"{variable}={raw!r} is not a whole number; unset it or give one"
            ) from exc
        if number < 1:
            raise ConfigError(f"{variable}={raw!r} must be at least 1")
        return number
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{variable}={raw!r} is not a number; unset it or give one") from exc
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{variable}={raw!r} must be a finite number")
    if name in _POSITIVE_FLOATS and value <= 0:
        raise ConfigError(f"{variable}={raw!r} must be positive")
    if value < 0:  # rate_limit_per_min: 0 turns the limit off
        raise ConfigError(f"{variable}={raw!r} must be 0 (off) or positive")
    return value
