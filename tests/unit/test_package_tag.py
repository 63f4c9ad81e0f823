"""The model tag names what a package computes, not where or when it was built."""

from __future__ import annotations

import json
from pathlib import Path

from cxr_triage.inference.package import content_version, finalise_package


def _package(root: Path, **info: object) -> Path:
    root.mkdir()
    (root / "network.onnx").write_bytes(b"weights")
    base = {"threshold": 0.3, "versions": {"code": "abc123", "params_sha256": "f00"}}
    (root / "package.json").write_text(json.dumps({**base, **info}))
    return root


def test_model_tag_ignores_provenance_but_not_the_model(tmp_path):
    tag = finalise_package(_package(tmp_path / "a"))
    same = _package(tmp_path / "b", versions={"code": "def456-dirty", "params_sha256": "bar"})
    assert finalise_package(same) == tag
    assert finalise_package(_package(tmp_path / "c", threshold=0.31)) != tag
    changed_weights = _package(tmp_path / "d")
    (changed_weights / "network.onnx").write_bytes(b"other weights")
    assert finalise_package(changed_weights) != tag


def test_finalising_twice_gives_the_recorded_tag(tmp_path):
    package = _package(tmp_path / "a")
    tag = finalise_package(package)
    assert json.loads((package / "package.json").read_text())["model_tag"] == tag
    assert f"cxr-triage:{content_version(package)}" == tag == finalise_package(package)
