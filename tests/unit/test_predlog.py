"""The prediction log: SQLite in WAL mode shared by processes, time windows, reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_triage.errors import ConfigError, DataError
from cxr_triage.inference.predlog import PredictionLog


def _row(request_id: str, **extra: object) -> dict[str, object]:
    return {"request_id": request_id, "model_tag": "cxr-triage:abc", "threshold": 0.3, **extra}


def test_prediction_log_survives_reopen_and_adds_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "predictions.sqlite"
    first = PredictionLog(path)
    first.append([_row("a", prob_abnormal=0.1)])
    first.close()
    second = PredictionLog(path)
    second.append([_row("b", prob_abnormal=0.9, emb_9=1.5)])
    frame = second.read()
    assert frame["request_id"].tolist() == ["a", "b"]
    assert frame["prob_abnormal"].tolist() == [0.1, 0.9]
    assert frame["emb_9"].isna().tolist() == [True, False]
    assert second.count() == 2
    assert (path.parent / "predictions.sqlite-wal").exists()  # WAL mode


def test_prediction_log_since_until_last_windows(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.sqlite")
    days = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    log.append([_row(f"r{i}", ts=f"{day}T12:00:00.000000+00:00") for i, day in enumerate(days)])
    window = log.read(since="2026-11-02", until="2026-11-04")
    assert window["request_id"].tolist() == ["r1", "r2"]
    assert log.read(last=2)["request_id"].tolist() == ["r2", "r3"]
    assert log.read(since="2026-11-02", last=1)["request_id"].tolist() == ["r3"]
    # Offsets are normalised to UTC: 13:00+02:00 is 11:00Z, before r1's noon.
    assert log.read(since="2026-11-02T13:00:00+02:00")["request_id"].tolist() == ["r1", "r2", "r3"]
    assert log.read(model_tag="other").empty


def test_prediction_log_refuses_bad_time_and_incomplete_rows(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.sqlite")
    with pytest.raises(ConfigError, match="ISO 8601"):
        log.read(since="last tuesday")
    with pytest.raises(DataError, match="threshold"):
        log.append([{"request_id": "x", "model_tag": "m"}])
    assert log.count() == 0


def test_prediction_log_unwritable_path_is_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="CXR_TRIAGE_PREDICTION_LOG"):
        PredictionLog(blocker / "predictions.sqlite")
