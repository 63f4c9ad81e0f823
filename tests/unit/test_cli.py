from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxr_triage.cli import app
from helpers.commands import runner


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["synth"],
        ["ingest"],
        ["inspect"],
        ["predict"],
        ["register"],
        ["promote"],
        ["monitor"],
        ["doctor"],
    ],
)
def test_cli_help_on_every_subcommand(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_cli_synth_then_inspect_json(tmp_path):
    out = tmp_path / "synth"
    result = runner.invoke(
        app,
        [
            "synth",
            "--n",
            "3",
            "--site",
            "hospital_b",
            "--seed",
            "1",
            "--out",
            str(out),
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    files = sorted((out / "images").iterdir())
    assert len(files) == 3
    result = runner.invoke(app, ["inspect", "--json", *map(str, files)])
    assert result.exit_code == 0, result.output
    reports = [json.loads(line) for line in result.output.splitlines()]
    assert [r["usable"] for r in reports] == [True] * 3
    assert {r["modality"] for r in reports} <= {"CR", "DX"}
    assert all(r["photometric"].startswith("MONOCHROME") for r in reports)


def test_cli_inspect_unusable_file_exits_2_with_reason(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.dcm"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(good)
    bad.write_bytes(b"\x00" * 300)
    result = runner.invoke(app, ["inspect", str(good), str(bad)])
    assert result.exit_code == 2
    assert "good.png: usable" in result.output
    assert "bad.dcm: REFUSED (not_an_image)" in result.output


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert "Traceback" not in result.output
