"""What the first stages read: the weights folder rule and the synthetic set's skip."""

from __future__ import annotations

import pytest
import yaml

from cxr_triage.config import Params, parse_section
from cxr_triage.errors import ConfigError
from cxr_triage.stages import synth
from cxr_triage.stages.backbone import weights_file
from helpers.pipeline import REPO


def test_weights_file_must_be_in_the_weights_folder(tmp_path):
    folder = tmp_path / "models/weights"
    folder.mkdir(parents=True)
    (folder / "chexnet.pth").write_bytes(b"x")
    assert weights_file(None, folder) is None
    assert weights_file("chexnet.pth", folder) == folder / "chexnet.pth"
    assert weights_file(str(folder / "chexnet.pth"), folder) == folder / "chexnet.pth"
    (tmp_path / "elsewhere.pth").write_bytes(b"x")
    with pytest.raises(ConfigError, match="outside"):
        weights_file(str(tmp_path / "elsewhere.pth"), folder)
    with pytest.raises(ConfigError, match="not found"):
        weights_file("missing.pth", folder)


def _params(tmp_path, source: str) -> Params:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["paths"]["synth_dir"] = str(tmp_path / "synth")
    data["synth"] = {"sites": {"hospital_a": 3}, "workers": 1}
    data["ingest"]["source"] = source
    return parse_section(Params, data, "")


def test_synth_stage_generates_nothing_for_a_real_source(tmp_path):
    assert synth.run(_params(tmp_path, "folder")) == {}
    assert [p.name for p in (tmp_path / "synth").iterdir()] == [synth.SKIPPED_NOTE]
    assert synth.run(_params(tmp_path, "synthetic")) == {"hospital_a": 3}
    assert (tmp_path / "synth/hospital_a/labels.csv").is_file()
