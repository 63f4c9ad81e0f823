from __future__ import annotations

import pytest

from cxr_triage.data.deid import SALT_ENV, SYNTHETIC_SALT, Pseudonymiser, salt_from_env
from cxr_triage.errors import ConfigError


def test_pseudonymiser_is_stable_keyed_and_namespaced():
    a, b = Pseudonymiser("s" * 16), Pseudonymiser("t" * 16)
    assert a.patient("123") == a.patient("123")
    assert a.patient("123") != b.patient("123")
    assert a.patient("123") != a.study("123")
    assert len(a.patient("123")) == 16 and "123" not in a.patient("123")
    assert "s" * 16 not in repr(a)


def test_salt_from_env_requires_a_secret_for_real_data(monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    with pytest.raises(ConfigError, match=SALT_ENV):
        salt_from_env(synthetic=False)
    monkeypatch.setenv(SALT_ENV, "short")
    with pytest.raises(ConfigError, match="at least 16"):
        salt_from_env(synthetic=False)
    monkeypatch.setenv(SALT_ENV, "x" * 32)
    assert salt_from_env(synthetic=False) == "x" * 32


def test_salt_from_env_synthetic_falls_back_to_public_salt(monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    assert salt_from_env(synthetic=True) == SYNTHETIC_SALT
