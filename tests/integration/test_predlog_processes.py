"""The prediction log shared by processes: concurrent appends from several writers.

(Moved from tests/unit/test_predlog.py: it starts Python processes.)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from cxr_triage.inference.predlog import PredictionLog

pytestmark = pytest.mark.integration


def test_prediction_log_concurrent_appends_from_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log" / "predictions.sqlite"
    PredictionLog(path).close()  # create the schema once, as the service does on start
    writer = textwrap.dedent(
        """
        import sys
        from cxr_triage.inference.predlog import PredictionLog
        log = PredictionLog(sys.argv[1])
        for i in range(int(sys.argv[3])):
            log.append([{"request_id": f"{sys.argv[2]}-{i}", "model_tag": "m", "threshold": 0.5,
                         "prob_abnormal": i / 100, "site": sys.argv[2]}])
        """
    )
    n_processes, n_rows = 4, 40
    procs = [
        subprocess.Popen([sys.executable, "-c", writer, str(path), f"p{k}", str(n_rows)])
        for k in range(n_processes)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * n_processes
    frame = PredictionLog(path).read()
    assert len(frame) == n_processes * n_rows
    assert frame["request_id"].is_unique
    assert frame.groupby("site").size().to_dict() == {f"p{k}": n_rows for k in range(4)}
    assert all(datetime.fromisoformat(ts).tzinfo is not None for ts in frame["ts"])
