"""Deterministic monitoring inputs for drift tests: a reference and current scenarios.

``integration/data/drift_figures.json`` holds what the drift check computed on them before the
monitoring redesign; the tests compare with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_triage.config import Params, parse_section
from cxr_triage.inference.features import monitoring_columns
from helpers.pipeline import tiny_params_data

SCENARIOS = ("same_site", "shifted_new_site", "mixed_sites")
STUB_TAG = "cxr-triage:stub"  # the tag helpers.pipeline.stub_package gives by default


def logged_rows(n: int, *, seed: int = 0) -> list[dict]:
    """Prediction log rows of the stub model: features, request ids ``r<i>``, threshold 0.5."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {c: float(rng.normal(0.5, 0.1)) for c in monitoring_columns(8)}
        row.update(site="hospital_a", manufacturer="Northwind", view_position="PA", sex="F")
        row.update(age_band="40-59", modality="DX", photometric="MONOCHROME2")
        row["prob_abnormal"] = float(rng.uniform(0, 1))
        row["label"] = "abnormal" if row["prob_abnormal"] >= 0.5 else "normal"
        row.update(request_id=f"r{i}", model_tag=STUB_TAG, threshold=0.5)
        rows.append(row)
    return rows


def feature_rows(
    n: int, *, site: str = "hospital_a", seed: int = 0, shift: float = 0.0, k: int = 8
) -> pd.DataFrame:
    """Monitoring rows in the real layout (``k`` embedding components); ``shift`` moves numbers."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.normal(0.5 + shift, 0.1, n) for c in monitoring_columns(k)})
    categories = {
        "site": site,
        "manufacturer": "Contoso Imaging" if shift else "Northwind Medical Systems",
        "view_position": "PA",
        "sex": rng.choice(["F", "M"], n),
        "age_band": "40-59",
        "modality": "DX",
        "photometric": "MONOCHROME2",
    }
    for column, value in categories.items():
        frame[column] = value
    frame["label"] = np.where(frame["prob_abnormal"] > 0.5, "abnormal", "normal")
    frame[["orig_rows", "orig_cols", "bits_stored"]] = [512.0, 512.0, 12.0]
    return frame


def reference_frame() -> pd.DataFrame:
    return pd.concat(
        [
            feature_rows(160, site="hospital_a", seed=1),
            feature_rows(120, site="hospital_b", seed=2),
        ],
        ignore_index=True,
    )


def current_frame(scenario: str) -> tuple[pd.DataFrame, str | None]:
    """The current rows of a scenario and the site passed to the run."""
    if scenario == "same_site":
        return feature_rows(60, site="hospital_a", seed=3), "hospital_a"
    if scenario == "shifted_new_site":
        return feature_rows(70, site="new_hospital", seed=4, shift=0.08), "new_hospital"
    mixed = pd.concat(
        [feature_rows(30, site="hospital_a", seed=5), feature_rows(25, site="hospital_b", seed=6)]
    )
    return mixed.reset_index(drop=True), None


def figures(summary: dict) -> dict:
    """What a drift run computes, without times, paths and ids."""
    keep = (
        "status", "drift", "site", "scope", "scope_reason", "n_reference", "n_current",
        "n_columns", "drifted_columns", "drift_share", "drift_share_threshold",
        "ignored_columns", "image_statistics_drifted", "columns", "failed_tests",
    )  # fmt: skip
    out = {key: summary[key] for key in keep}
    out["prediction_drift"] = summary["prediction_drift"]
    embedding = dict(summary["embedding_drift"])
    embedding["calibration"] = {
        k: v for k, v in embedding["calibration"].items() if k not in ("cached", "cache_file")
    }
    out["embedding_drift"] = embedding
    out["tests"] = [{k: t[k] for k in ("alias", "status")} for t in summary["tests"]]
    return out


def params_for(root: Path) -> Params:
    data = tiny_params_data(root)
    # The module these figures come from tested the prediction at K-S p 0.05, as every column.
    data["monitor"]["prediction_threshold"] = 0.05
    return parse_section(Params, data, "")
