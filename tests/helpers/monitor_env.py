"""The monitoring tests' environment: a tiny package with a larger reference, image batches to
score, and a JSON getter for Evidently UI's API (``integration/test_monitor.py``)."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cxr_triage.config import Params
from cxr_triage.data.synth import generate_dataset
from cxr_triage.state import state_layout


@dataclass(frozen=True)
class MonitorEnv:
    root: Path
    package_dir: Path
    params: Params
    params_file: Path
    same_site: Path  # hospital_a images, not in the reference
    new_site: Path  # new_hospital images: a shifted acquisition

    @property
    def monitor_dir(self) -> Path:
        return state_layout().monitor_dir


def synth_images(root: Path, name: str, n: int, site: str, seed: int) -> Path:
    generate_dataset(root / name, n=n, site=site, seed=seed)
    return root / name / "images"


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())
