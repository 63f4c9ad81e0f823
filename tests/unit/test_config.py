from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxr_triage.config import load_params
from cxr_triage.errors import ConfigError
from helpers.pipeline import REPO


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_load_params_reads_the_repository_params():
    params = load_params(REPO / "params.yaml")
    assert params.ingest.source == "synthetic"
    assert params.paths.ingest_dir == "data/ingest"
    assert sum(params.synth.sites.values()) > 0


def test_load_params_unknown_key_names_the_key(tmp_path):
    data = _repo_params()
    data["ingest"]["imagesize"] = 64
    with pytest.raises(ConfigError, match=r"ingest\.imagesize.*valid keys.*image_size"):
        load_params(_write(tmp_path, data))


def test_load_params_unknown_section_is_refused(tmp_path):
    data = _repo_params() | {"trian": {}}
    with pytest.raises(ConfigError, match="unknown key trian"):
        load_params(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("ingest", "image_size", "big", r"ingest\.image_size: expected int"),
        ("ingest", "image_size", True, r"ingest\.image_size: expected int"),
        ("ingest", "source", "pacs", r"ingest\.source: must be one of synthetic"),
        ("split", "use_official", "yes", r"split\.use_official: expected bool"),
        ("ingest", "allowed_modalities", "CR", r"ingest\.allowed_modalities: expected a list"),
        ("synth", "sites", {"a": "many"}, r"synth\.sites\.a: expected int"),
    ],
)
def test_load_params_wrong_type_names_the_key(tmp_path, section, key, value, expected):
    data = _repo_params()
    data[section][key] = value
    with pytest.raises(ConfigError, match=expected):
        load_params(_write(tmp_path, data))


def test_load_params_int_accepted_for_float(tmp_path):
    data = _repo_params()
    data["split"]["val_frac"] = 0
    assert load_params(_write(tmp_path, data)).split.val_frac == 0.0


def test_load_params_fractions_leaving_no_training_data_are_refused(tmp_path):
    data = _repo_params()
    data["split"].update(val_frac=0.5, test_frac=0.5)
    with pytest.raises(ConfigError, match="leaves no training data"):
        load_params(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("section", "values", "expected"),
    [
        (
            "backbone",
            {"finding_labels": False, "ssl": {"enabled": False}},
            r"random initialisation.*backbone\.weights",
        ),
        ("compare", {"fold_pretraining_repeats": 3}, r"between 0 \(off\) and compare\.cv_repeats"),
        ("compare", {"fold_pretraining_repeats": -1}, r"fold_pretraining_repeats"),
    ],
)
def test_load_params_backbone_pretraining_settings_that_cannot_work_are_refused(
    tmp_path, section, values, expected
):
    data = _repo_params()
    data[section].update(values)
    with pytest.raises(ConfigError, match=expected):
        load_params(_write(tmp_path, data))


def test_load_params_missing_required_key(tmp_path):
    data = _repo_params()
    del data["seed"]
    with pytest.raises(ConfigError, match="missing required key seed"):
        load_params(_write(tmp_path, data))


def test_load_params_missing_file_says_where(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_load_params_invalid_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)
