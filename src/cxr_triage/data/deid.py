"""Pseudonymisation: raw identifiers become salted SHA-256 digests inside ingest, never leave it.

The salt comes from the environment variable ``CXR_TRIAGE_SALT`` (at least 16 characters; keep
it secret and keep it stable, so one patient maps to the same pseudonym across data versions and
the patient-level split stays valid). The synthetic default data carries only invented identities,
so it may use a public fixed salt when the variable is unset.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cxr_triage.errors import ConfigError

__all__ = ["SALT_ENV", "SYNTHETIC_SALT", "Pseudonymiser", "salt_from_env"]

SALT_ENV = "CXR_TRIAGE_SALT"
SYNTHETIC_SALT = "cxr-triage-public-salt-for-synthetic-data-only"
_MIN_SALT_LENGTH = 16


def salt_from_env(*, synthetic: bool) -> str:
    """The pseudonymisation salt.

    Args:
        synthetic: the data is the synthetic default; a public salt is acceptable then.

    Raises:
        ConfigError: real data and no (or a too short) ``CXR_TRIAGE_SALT``.
    """
    salt = os.environ.get(SALT_ENV, "")
    if not salt and synthetic:
        return SYNTHETIC_SALT
    if len(salt) < _MIN_SALT_LENGTH:
        raise ConfigError(
            f"{SALT_ENV} must be set to a secret of at least {_MIN_SALT_LENGTH} characters to "
            "pseudonymise real patient identifiers, e.g. `export "
            f"{SALT_ENV}=$(python -c 'import secrets; print(secrets.token_hex(32))')`; store it "
            "with your other secrets and reuse it for every ingest of the same data"
        )
    return salt


class Pseudonymiser:
    """Keyed digests (HMAC-SHA256, 16 hex characters) of raw identifiers, one namespace each."""

    def __init__(self, salt: str) -> None:
        self._key = salt.encode("utf-8")

    def __repr__(self) -> str:  # never show the salt
        return "Pseudonymiser(<salt hidden>)"

    def digest(self, namespace: str, raw: str) -> str:
        message = f"{namespace}\x00{raw}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:16]

    def patient(self, raw: str) -> str:
        return self.digest("patient", raw)

    def study(self, raw: str) -> str:
        return self.digest("study", raw)

    def image(self, raw: str) -> str:
        return self.digest("image", raw)
