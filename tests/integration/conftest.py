from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from cxr_triage.data.synth import generate_dataset
from helpers.commands import init_dvc_repo
from helpers.pipeline import tiny_params_data as _tiny_params_data

SYNTH_SITES = {"hospital_a": 14, "hospital_b": 10}


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    """A small synthetic source in the synth stage's layout: <dir>/<site>/{labels.csv,images/}."""
    root = tmp_path_factory.mktemp("synth")
    for site, n in SYNTH_SITES.items():
        generate_dataset(root / site, n=n, site=site, seed=7)
    return root


@pytest.fixture(scope="module")
def service_module(tiny_pipeline, tmp_path_factory) -> Iterator[ModuleType]:
    """``cxr_triage.serving.service`` imported for the tiny package, logging to a temp file."""
    import importlib

    from cxr_triage.inference.registry import register_package

    tag = register_package(tiny_pipeline.package_dir)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CXR_TRIAGE_MODEL_TAG", tag)
        env.setenv("CXR_TRIAGE_PREDICTION_LOG", str(tmp_path_factory.mktemp("log") / "p.sqlite"))
        yield importlib.import_module("cxr_triage.serving.service")


_ASGI_APPS: list = []


@pytest.fixture(scope="module")
def asgi_app(service_module):
    """The service's ASGI app, made once per process: BentoML registers its Prometheus metrics
    once per app (a second app in the same process fails). Each TestClient start makes a fresh
    service instance."""
    if not _ASGI_APPS:
        _ASGI_APPS.append(service_module.CxrTriage.to_asgi())
    return _ASGI_APPS[0]


@pytest.fixture(scope="session")
def tiny_params_data():
    """A function giving params.yaml scaled down to seconds (see ``helpers.pipeline``)."""
    return _tiny_params_data


def _touch(name: str) -> str:
    return f"python -c \"open('{name}', 'w').write('x')\""


@pytest.fixture(scope="module")
def shuffled_repo(tmp_path_factory) -> Path:
    """dvc.yaml listing stages out of dependency order: c needs b needs a; d is independent."""
    stages = {
        "c": {"cmd": _touch("c.txt"), "deps": ["b.txt"], "outs": ["c.txt"]},
        "d": {"cmd": _touch("d.txt"), "outs": ["d.txt"]},
        "b": {"cmd": _touch("b.txt"), "deps": ["a.txt"], "outs": ["b.txt"]},
        "a": {"cmd": _touch("a.txt"), "outs": ["a.txt"]},
        "killed": {"cmd": 'python -c "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"'},
        "bad_data": {"cmd": "python -c \"import sys; print('no label column'); sys.exit(3)\""},
    }
    root = init_dvc_repo(tmp_path_factory.mktemp("dvc_order"))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root
