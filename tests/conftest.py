"""Shared fixtures: the read-only ../shared/data folder and small synthetic CR/DX DICOMs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from helpers.dicom import write_dicom
from helpers.embeddings import Data, embeddings
from helpers.finetune import blob_images

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; skips the test where it is absent."""
    path = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"../shared/data is absent: expected the read-only real data at {path}")
    return path


MakeDicom = Callable[..., Path]


@pytest.fixture
def make_dicom(tmp_path: Path) -> MakeDicom:
    """Factory ``make_dicom(pixels=None, **overrides)`` writing a small CR/DX DICOM into
    ``tmp_path`` with :func:`helpers.dicom.write_dicom` (its docstring lists the overrides)."""
    return functools.partial(write_dicom, tmp_path)


@pytest.fixture(scope="session", autouse=True)
def isolated_bentoml_home(tmp_path_factory) -> Path:
    """Every test run gets its own BentoML store: tests never touch ~/bentoml."""
    import os

    home = tmp_path_factory.mktemp("bentoml_home")
    os.environ["BENTOML_HOME"] = str(home)
    return home


@pytest.fixture(scope="session", autouse=True)
def isolated_state_dir(tmp_path_factory) -> Path:
    """Every test run gets its own state folder (prediction log, monitoring, serving record)."""
    import os

    from cxr_triage.state import PREDICTION_LOG_ENV, STATE_DIR_ENV

    state = tmp_path_factory.mktemp("state")
    os.environ[STATE_DIR_ENV] = str(state)
    os.environ.pop(PREDICTION_LOG_ENV, None)
    return state


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A tiny trained pipeline (synth .. package) under a temporary folder, built once."""
    from helpers.pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_pipeline"))


@pytest.fixture(scope="module")
def blob_data() -> dict[str, np.ndarray]:
    """64 training and 32 validation blob images (``helpers.finetune.blob_images``), labels."""
    train_x, train_y = blob_images(64, seed=1)
    val_x, val_y = blob_images(32, seed=2)
    return {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}


# Embedding rows for the classifier zoo (unit/test_transfer.py and
# integration/test_transfer_processes.py).


@pytest.fixture(scope="module")
def embedding_data() -> Data:
    """150 patients with 3 rows each, 16 dimensions (``helpers.embeddings.embeddings``)."""
    return embeddings(n_patients=150, images=3, dim=16, seed=0)


@pytest.fixture(scope="module")
def embedding_train(embedding_data: Data) -> Data:
    """The rows of patients 0-99 of ``embedding_data``."""
    X, y, groups = embedding_data
    keep = groups < 100
    return X[keep], y[keep], groups[keep]
