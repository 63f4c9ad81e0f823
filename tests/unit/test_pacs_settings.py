"""Listener settings: environment and file, and messages that name what to fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cxr_triage.errors import ConfigError
from cxr_triage.pacs.settings import SETTINGS_ENV, Destination, PacsSettings


def test_defaults_bind_loopback_and_need_calling_aes() -> None:
    settings = PacsSettings.from_env({})
    assert (settings.host, settings.port, settings.ae_title) == ("127.0.0.1", 11112, "CXRTRIAGE")
    with pytest.raises(ConfigError, match="CXR_TRIAGE_PACS_CALLING_AES"):
        settings.require_calling_aes()


def test_environment_values_are_parsed() -> None:
    settings = PacsSettings.from_env(
        {
            "CXR_TRIAGE_PACS_CALLING_AES": "MODALITY1=hospital_a, PACS ,CT2=hospital_b",
            "CXR_TRIAGE_PACS_DESTINATIONS": "PACS@10.0.0.5:104,ARCHIVE@archive:11112",
            "CXR_TRIAGE_PACS_STOW_URL": "http://pacs:8042/dicom-web/",
            "CXR_TRIAGE_PACS_WORKLIST_WEBHOOK": "https://worklist/hook",
            "CXR_TRIAGE_PACS_QUIET_SECONDS": "2.5",
            "CXR_TRIAGE_PACS_ACCEPT_SECONDARY_CAPTURE": "false",
            "CXR_TRIAGE_PACS_PORT": "104",
        }
    )
    assert dict(settings.calling_aes) == {
        "MODALITY1": "hospital_a",
        "PACS": None,
        "CT2": "hospital_b",
    }
    assert settings.site_of("MODALITY1") == "hospital_a"
    assert settings.destinations == (
        Destination("PACS", "10.0.0.5", 104),
        Destination("ARCHIVE", "archive", 11112),
    )
    assert settings.destination_names == (
        "PACS@10.0.0.5:104",
        "ARCHIVE@archive:11112",
        "stow:http://pacs:8042/dicom-web",
        "webhook:https://worklist/hook",
    )
    assert settings.quiet_seconds == 2.5
    assert settings.accept_secondary_capture is False
    assert settings.port == 104


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CXR_TRIAGE_PACS_PORT", "eleven", "CXR_TRIAGE_PACS_PORT='eleven' is not an integer"),
        ("CXR_TRIAGE_PACS_PORT", "70000", "outside 1-65535"),
        ("CXR_TRIAGE_PACS_AE_TITLE", "A_TITLE_LONGER_THAN_16", "not a DICOM AE title"),
        ("CXR_TRIAGE_PACS_CALLING_AES", "BAD\\AE=x", "CXR_TRIAGE_PACS_CALLING_AES"),
        ("CXR_TRIAGE_PACS_DESTINATIONS", "PACS:104", "write AE@host:port"),
        ("CXR_TRIAGE_PACS_STUDY_RULE", "median", "use one of max, mean"),
        ("CXR_TRIAGE_PACS_QUIET_SECONDS", "-1", "CXR_TRIAGE_PACS_QUIET_SECONDS must be >= 0"),
        ("CXR_TRIAGE_PACS_SECONDARY_CAPTURE", "maybe", "use true or false"),
        ("CXR_TRIAGE_PACS_SPOOL_DIR", "relative/spool", "give an absolute path"),
        ("CXR_TRIAGE_PACS_STOW_URL", "pacs:8042", "http:// or https://"),
        ("CXR_TRIAGE_PACS_TLS_CERT", "/nonexistent.pem", "needs both"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        PacsSettings.from_env({variable: value})


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    path.write_text(
        "ae_title: TRIAGE\n"
        "calling_aes: {MOD1: hospital_a, MOD2: null}\n"
        "destinations:\n"
        "  - PACS@127.0.0.1:4242\n"
        "  - {ae_title: ARCH, host: 127.0.0.1, port: 4243}\n"
        "quiet_seconds: 10\n"
    )
    settings = PacsSettings.from_env(
        {SETTINGS_ENV: str(path), "CXR_TRIAGE_PACS_QUIET_SECONDS": "3"}
    )
    assert settings.ae_title == "TRIAGE"
    assert dict(settings.calling_aes) == {"MOD1": "hospital_a", "MOD2": None}
    assert [d.name for d in settings.destinations] == [
        "PACS@127.0.0.1:4242",
        "ARCH@127.0.0.1:4243",
    ]
    assert settings.quiet_seconds == 3.0


def test_file_refuses_unknown_keys_and_secrets(tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    path.write_text("quiet_secs: 3\n")
    with pytest.raises(ConfigError, match="unknown setting.*quiet_secs"):
        PacsSettings.from_file(path)
    path.write_text("dicomweb_password: hunter2\n")
    with pytest.raises(ConfigError, match="CXR_TRIAGE_PACS_DICOMWEB_PASSWORD"):
        PacsSettings.from_file(path)
    assert "hunter2" not in repr(
        PacsSettings.from_env({"CXR_TRIAGE_PACS_DICOMWEB_PASSWORD": "hunter2"})
    )


def test_spool_defaults_to_the_state_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CXR_TRIAGE_STATE_DIR", str(tmp_path))
    assert PacsSettings().spool == tmp_path / "spool"
    assert PacsSettings(spool_dir=tmp_path / "elsewhere").spool == tmp_path / "elsewhere"
