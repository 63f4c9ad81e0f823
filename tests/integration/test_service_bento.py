"""Build the Bento offline from bentofile.yaml and serve it with `bentoml serve <bento tag>`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cxr_triage.inference.registry import register_package
from helpers.bento import BENTOML, serve
from helpers.pipeline import REPO
from helpers.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bento_builds_offline_and_serves_its_model(tiny_pipeline, tmp_path) -> None:
    tag = register_package(tiny_pipeline.package_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_TRIAGE_")}
    env.update(BENTOML_DO_NOT_TRACK="True")
    built = subprocess.run(
        [sys.executable, "-m", "cxr_triage.serving.bento", tag],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    bento_tag = built.stdout.strip().splitlines()[-1]
    assert bento_tag.startswith("cxr-triage:")
    import bentoml

    bento = bentoml.bentos.get(bento_tag)
    assert (Path(bento.path) / "src" / "cxr_triage" / "serving" / "service.py").is_file()
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "pydicom==3.0.2" in requirements
    assert {"name": "CXR_TRIAGE_MODEL_TAG", "value": tag} in [
        {"name": e.name, "value": e.value} for e in bento.info.envs
    ]
    assert tag in [str(m.tag) for m in bento.info.all_models]  # the class declared it

    # The Bento's envs name the model; the prediction log is the state folder's, never the
    # Bento's working directory (the Bento's src/ is where `bentoml serve <bento>` runs).
    with serve(tmp_path, tag=tag, target=bento_tag) as server:
        image = sorted(
            (Path(tiny_pipeline.params.paths.synth_dir) / "hospital_a" / "images").iterdir()
        )[0]
        response = httpx.post(
            f"{server.url}/predict", files={"image": ("a.dcm", image.read_bytes())}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.json()["model_tag"] == tag
        assert server.log_path.is_file()
        assert not list(Path(bento.path).rglob("*.sqlite*"))

    # A prediction log inside the Bento (or the store) stops `bentoml serve` before any worker
    # starts, with the reason; the audit log would otherwise be deleted with the Bento.
    inside = Path(bento.path) / "src" / "predictions.sqlite"
    command = [str(BENTOML), "serve", bento_tag, "--host", "127.0.0.1", "--port", str(free_port())]
    refused = subprocess.run(
        command,
        cwd=tmp_path,
        env={**env, "CXR_TRIAGE_PREDICTION_LOG": str(inside)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output[-2000:]  # it refuses to start: it exits
    assert f"the prediction log {inside} is inside" in output, output[-2000:]
    assert not inside.exists()
