"""Where operations state lives: one folder, outside every artifact and every working directory.

Operations state is what running the product accumulates, as opposed to what the pipeline
builds (DVC outputs) or what is packaged (the model store, Bentos). It must survive a new
Bento, a ``dvc repro`` and a ``git clean``, so it never lives inside any of them, and never
relative to the working directory (``bentoml serve`` of a stored Bento runs inside the Bento)::

    $CXR_TRIAGE_STATE_DIR                default: $XDG_STATE_HOME/cxr-triage
                                         (~/.local/state/cxr-triage)
      predictions.sqlite (+ -wal, -shm)  the prediction log and fed-back reads
                                         ($CXR_TRIAGE_PREDICTION_LOG overrides the file)
      serving.json                       which model serves, with the promotion history
      monitor/runs/, monitor/workspace/  drift reports and the Evidently workspace
      monitor/calibration/               cached embedding-drift thresholds
      spool/                             instances received over DICOM, until triaged
      backups/                           ``cxr-triage backup`` copies

The paths are read from the environment when asked for (never at import), so a test or a
deployment sets the variables before it starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cxr_triage.errors import ConfigError

__all__ = ["PREDICTION_LOG_ENV", "STATE_DIR_ENV", "StateLayout", "state_layout"]

STATE_DIR_ENV = "CXR_TRIAGE_STATE_DIR"
PREDICTION_LOG_ENV = "CXR_TRIAGE_PREDICTION_LOG"


def _absolute(variable: str, value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ConfigError(
            f"{variable}={value!r} is a relative path: state would land wherever the process "
            "happens to run (inside a Bento, a clone...); give an absolute path"
        )
    return path


@dataclass(frozen=True)
class StateLayout:
    """The state folder and the place of each kind of state in it."""

    root: Path
    prediction_log: Path

    @property
    def serving_record(self) -> Path:
        return self.root / "serving.json"

    @property
    def monitor_dir(self) -> Path:
        return self.root / "monitor"

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    @property
    def backup_dir(self) -> Path:
        return self.root / "backups"


def state_layout() -> StateLayout:
    """The state layout the environment configures (see the module docstring).

    Raises:
        ConfigError: a variable holds a relative path.
    """
    value = os.environ.get(STATE_DIR_ENV, "").strip()
    if value:
        root = _absolute(STATE_DIR_ENV, value)
    else:
        base = os.environ.get("XDG_STATE_HOME", "").strip() or str(Path.home() / ".local/state")
        root = _absolute("XDG_STATE_HOME", base) / "cxr-triage"
    log_value = os.environ.get(PREDICTION_LOG_ENV, "").strip()
    log = _absolute(PREDICTION_LOG_ENV, log_value) if log_value else root / "predictions.sqlite"
    return StateLayout(root=root, prediction_log=log)
