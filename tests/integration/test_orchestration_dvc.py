"""Orchestration against real DVC: stage order from its graph; running and classifying stages.

(Moved from tests/unit/test_orchestration.py: these run git and dvc.)
"""

from __future__ import annotations

import pytest

from cxr_triage.errors import ConfigError
from cxr_triage.orchestration.pipeline import StageFailedError, run_stage, stage_order
from helpers.pipeline import REPO

pytestmark = pytest.mark.integration


def test_stage_order_follows_dvc_graph_not_file_order(shuffled_repo):
    order = stage_order(shuffled_repo)
    assert order.index("a") < order.index("b") < order.index("c")
    assert set(order) == {"a", "b", "c", "d", "killed", "bad_data"}
    # independent stages keep their dvc.yaml position relative to each other
    assert order.index("d") < order.index("killed") < order.index("bad_data")


def test_stage_order_until_keeps_only_dependencies(shuffled_repo):
    assert stage_order(shuffled_repo, until="c") == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        stage_order(shuffled_repo, until="nope")


def test_stage_order_of_this_repository_starts_with_data_and_ends_with_package():
    order = stage_order(REPO)
    assert order[:3] == ["synth", "ingest", "split"]
    assert order[-1] == "package"
    assert order.index("backbone") < order.index("embed") < order.index("transfer")
    assert order.index("compare") < order.index("threshold") < order.index("evaluate")


def test_run_stage_streams_output_and_skips_unchanged(shuffled_repo):
    lines: list[str] = []
    first = run_stage(shuffled_repo, "a", on_line=lines.append)
    assert first.ran and any("Running stage 'a'" in line for line in lines)
    assert not run_stage(shuffled_repo, "a").ran  # unchanged: DVC skips it
    assert "a:" in (shuffled_repo / "dvc.lock").read_text()


def test_run_stage_classifies_killed_as_transient_and_data_error_as_not(shuffled_repo):
    with pytest.raises(StageFailedError) as killed:
        run_stage(shuffled_repo, "killed")
    assert killed.value.transient
    with pytest.raises(StageFailedError) as bad:
        run_stage(shuffled_repo, "bad_data")
    assert not bad.value.transient
    assert "no label column" in str(bad.value) and "dvc repro bad_data" in str(bad.value)
