from __future__ import annotations

from pathlib import Path

import pytest

from cxr_triage.data.synth import generate_dataset
from pipeline_fixture import tiny_params_data as _tiny_params_data

SYNTH_SITES = {"hospital_a": 14, "hospital_b": 10}


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    """A small synthetic source in the synth stage's layout: <dir>/<site>/{labels.csv,images/}."""
    root = tmp_path_factory.mktemp("synth")
    for site, n in SYNTH_SITES.items():
        generate_dataset(root / site, n=n, site=site, seed=7)
    return root


@pytest.fixture(scope="session")
def tiny_params_data():
    """A function giving params.yaml scaled down to seconds (see ``pipeline_fixture``)."""
    return _tiny_params_data
