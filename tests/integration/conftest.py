from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxr_triage.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]

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
    """A function giving params.yaml scaled down to seconds (see :func:`_tiny_params_data`)."""
    return _tiny_params_data


def _tiny_params_data(root: Path | None = None) -> dict:
    """The repository's params.yaml scaled down to seconds: few images, 32 px, 2 epochs.

    Args:
        root: prefix for every path (None keeps them relative, as in a repository).
    """
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    if root is not None:
        data["paths"] = {k: str(root / v) for k, v in data["paths"].items()}
    data["synth"] = {"sites": {"hospital_a": 40, "hospital_c": 32}, "workers": 1}
    data["ingest"].update(image_size=32, workers=1, source_dir=data["paths"]["synth_dir"])
    train = {
        "epochs": 2,
        "batch_size": 16,
        "patience": None,
        "num_threads": 1,
        "augment": True,
        "mixed_precision": False,
    }
    data["backbone"]["pretrain"].update(train)
    data["finetune"].update(train, freeze_backbone_epochs=0)
    data["transfer"].update(candidates=["logreg", "knn"], cv_folds=2, n_jobs=1)
    data["compare"].update(n_boot=50, calibration_folds=2)
    data["threshold"]["n_boot"] = 50
    data["evaluate"].update(n_boot=50, min_slice_count=5)
    return data
