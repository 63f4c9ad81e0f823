"""`cxr-triage doctor` checks that need no Prefect server (the rest: test_schedules.py)."""

from __future__ import annotations

import importlib.metadata

from cxr_triage.orchestration.doctor import (
    DoctorReport,
    Finding,
    check_environment,
    check_server,
)
from helpers.ports import free_port


def _lock(tmp_path, **versions: str):
    path = tmp_path / "requirements.lock"
    path.write_text(
        "".join(f"{name}=={v} \\\n    --hash=sha256:aaaa\n" for name, v in versions.items())
    )
    return path


def test_environment_matching_the_lock_is_ok_and_names_sqlalchemy(tmp_path):
    installed = importlib.metadata.version("sqlalchemy")
    lock = _lock(tmp_path, sqlalchemy=installed, pyyaml=importlib.metadata.version("pyyaml"))
    (finding,) = check_environment(lock)
    assert finding.ok, finding.line()
    assert f"2 packages match {lock} (SQLAlchemy {installed})" in finding.message


def test_environment_with_another_sqlalchemy_fails_and_says_why_and_what_to_do(tmp_path):
    # A version other than the installed one, whichever that is (a drifted venv may hold 2.1.9).
    other = "2.1.8" if importlib.metadata.version("sqlalchemy") == "2.1.9" else "2.1.9"
    lock = _lock(tmp_path, sqlalchemy=other, pyyaml=importlib.metadata.version("pyyaml"))
    (finding,) = check_environment(lock)
    assert not finding.ok
    assert finding.message.count("sqlalchemy: ") == 1
    assert f"the lock says {other}" in finding.message
    assert "scheduler creates no runs" in finding.message
    assert "make setup" in finding.fix


def test_environment_without_a_lock_file_fails_with_the_fix(tmp_path):
    (finding,) = check_environment(tmp_path / "requirements.lock")
    assert not finding.ok and "make lock" in finding.message


def test_server_unset_or_not_answering_says_how_to_start_it():
    unset = check_server(None)
    assert not unset.ok and "PREFECT_API_URL is not set" in unset.message
    assert "prefect server start" in unset.fix and "export PREFECT_API_URL=" in unset.fix
    url = f"http://127.0.0.1:{free_port()}/api"  # a loopback port nothing listens on
    refused = check_server(url, timeout=2)
    assert not refused.ok and f"nothing answers at {url}" in refused.message
    assert "prefect server start" in refused.fix


def test_report_text_puts_each_fix_under_its_failure_and_ends_with_the_verdict():
    report = DoctorReport(
        (Finding(True, "environment", "fine"), Finding(False, "a/b", "no worker", "start one"))
    )
    assert not report.healthy
    assert report.text().splitlines() == [
        "ok    environment: fine",
        "FAIL  a/b: no worker",
        "      -> start one",
        "unhealthy: 1 problem(s), each with what to do above",
    ]
    assert DoctorReport((Finding(True, "x", "y"),)).text().endswith("\nhealthy")
