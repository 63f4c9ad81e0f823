"""Checkpoint folders for the training stages: resume an interrupted run, never a stale one."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

__all__ = ["checkpoint_dir_for"]


def checkpoint_dir_for(root: Path, stage: str, *parts: object) -> Path:
    """``root/<stage>-<digest>``: the same options and data resume; anything else starts fresh.

    DVC re-runs a stage when its params or inputs change; a checkpoint of the old settings must
    then not be resumed (nor refused), so each combination gets its own folder. Folders of other
    combinations are removed, keeping one run's checkpoints at most.
    """
    digest = hashlib.sha256()
    for part in parts:
        if hasattr(part, "__dataclass_fields__"):
            part = asdict(part)
        if isinstance(part, np.ndarray):
            digest.update(part.tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    directory = root / f"{stage}-{digest.hexdigest()[:12]}"
    for stale in root.glob(f"{stage}-*"):
        if stale != directory:
            shutil.rmtree(stale, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
