"""requirements.lock: reading it, checking the environment against it, the Bento's pins from it."""

from __future__ import annotations

import importlib.metadata

import pytest
import yaml

from cxr_triage.errors import ConfigError
from cxr_triage.lockfile import NOT_AUDITED, Mismatch, audit_lock, installed_mismatches, read_lock
from cxr_triage.serving.bento import pins_from_lock
from helpers.pipeline import REPO
from helpers.ports import free_port


def test_read_lock_gives_canonical_names_and_exact_versions(lock):
    assert read_lock(lock) == {"numpy": "2.4.6", "scikit-learn": "1.9.1", "torch": "2.13.0+cpu"}


@pytest.mark.parametrize("line", ["numpy>=2", "numpy", "numpy==2.4.6,<3", "numpy=2.4.6"])
def test_read_lock_refuses_a_requirement_that_is_not_an_exact_pin(tmp_path, line):
    path = tmp_path / "requirements.lock"
    path.write_text(f"{line} \\\n    --hash=sha256:aaaa\n")
    with pytest.raises(ConfigError, match=r"requirements.lock:1: .*make lock"):
        read_lock(path)


def test_read_lock_names_the_missing_file_and_how_to_make_it(tmp_path):
    with pytest.raises(ConfigError, match="make lock"):
        read_lock(tmp_path / "requirements.lock")


def test_installed_mismatches_finds_missing_and_other_versions():
    pyyaml = importlib.metadata.version("pyyaml")
    lock = {
        "pyyaml": pyyaml,  # as installed: no mismatch
        "packaging": "0.0.1",  # installed, another version
        "no-such-package-cxr": "1.0",  # not installed
    }
    assert installed_mismatches(lock) == [  # type: ignore[arg-type]
        Mismatch("no-such-package-cxr", "1.0", None),
        Mismatch("packaging", "0.0.1", importlib.metadata.version("packaging")),
    ]
    assert "not installed, the lock says 1.0" in str(Mismatch("x", "1.0", None))


def test_the_repository_lock_pins_the_cpu_torch_and_sqlalchemy_below_2_1():
    lock = read_lock(REPO / "requirements.lock")
    assert lock["torch"].endswith("+cpu")  # a plain torch pulls several GB of CUDA wheels
    assert lock["sqlalchemy"].startswith("2.0.")  # 2.1 stops the Prefect server's scheduler


def test_bento_pins_come_from_the_lock_in_order(lock):
    assert pins_from_lock(["torch", "scikit_learn", "numpy"], lock) == [
        "torch==2.13.0+cpu",
        "scikit_learn==1.9.1",
        "numpy==2.4.6",
    ]


def test_bento_pins_refuse_names_not_in_the_lock_and_versions(lock):
    with pytest.raises(ConfigError) as info:
        pins_from_lock(["numpy", "pandas", "torch==2.13.0", "onnx>=1"], lock)
    message = str(info.value)
    assert "'pandas' is not in" in message
    assert "'torch==2.13.0' is not a plain package name" in message
    assert "'onnx>=1' is not a plain package name" in message
    assert "'numpy'" not in message
    assert "make lock" in message


def test_every_package_of_bentofile_is_in_the_repository_lock():
    packages = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    pins = pins_from_lock(packages, REPO / "requirements.lock")
    assert len(pins) == len(packages)
    assert any(p.startswith("torch==") and p.endswith("+cpu") for p in pins)


def test_audit_without_a_reachable_vulnerability_database_is_not_a_pass(lock):
    closed = f"http://127.0.0.1:{free_port()}"  # a loopback port nothing listens on
    services = {"pypi": closed + "/pypi/{name}/{version}/json", "osv": closed + "/v1/query"}
    code, message = audit_lock(lock, services=services, timeout=2)
    assert code == NOT_AUDITED != 0
    assert message.startswith("not audited: no vulnerability database answered (pypi: ")
    assert f"{closed}/pypi/numpy/2.4.6/json unreachable" in message
    assert f"osv: {closed}/v1/query unreachable" in message
