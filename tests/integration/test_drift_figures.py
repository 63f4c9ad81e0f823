"""The redesign of monitoring changes no figure: same verdict, scores and thresholds.

``data/drift_figures.json`` holds what ``run_monitoring`` of the module before the split
(commit f538ccd, ``cxr_triage/monitoring/drift.py``) computed on the inputs of
``tests/drift_inputs.py`` with the same seed; :func:`check_drift` must compute the same, to the
last digit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_triage.monitoring import CurrentData, check_drift
from helpers.drift_inputs import SCENARIOS, current_frame, figures, params_for, reference_frame
from helpers.pipeline import stub_package

pytestmark = pytest.mark.integration

FIGURES = Path(__file__).with_name("data") / "drift_figures.json"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_check_drift_computes_the_figures_of_the_module_it_replaced(scenario, tmp_path):
    expected = json.loads(FIGURES.read_text())[scenario]
    current, site = current_frame(scenario)

    summary = check_drift(
        params_for(tmp_path),
        CurrentData(current),
        package=stub_package(tmp_path / "package", reference_frame()),
        site=site,
        out_dir=tmp_path / "monitor",
    )

    assert figures(summary.to_json()) == expected
