"""Build the Bento offline from bentofile.yaml and serve it with `bentoml serve <bento tag>`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cxr_triage.inference.registry import register_package

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).with_name("bentoml")


def test_bento_builds_offline_and_serves_its_model(tiny_pipeline, tmp_path) -> None:
    tag = register_package(tiny_pipeline.package_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_TRIAGE_")}
    env.update(BENTOML_DO_NOT_TRACK="True", CXR_TRIAGE_PREDICTION_LOG=str(tmp_path / "p.sqlite"))
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

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(BENTOML), "serve", bento_tag, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        image = sorted(
            (Path(tiny_pipeline.params.paths.synth_dir) / "hospital_a" / "images").iterdir()
        )[0]
        response = httpx.post(
            f"{url}/predict", files={"image": ("a.dcm", image.read_bytes())}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.json()["model_tag"] == tag
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this test started
        proc.wait(timeout=30)
        log.close()
