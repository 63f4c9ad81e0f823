"""The web page in headless Chromium against a real ``bentoml serve`` with an API key set.

Uploads a real DICOM and a real NIH PNG, checks the probability shown against ``/predict``'s to
3 decimals, toggles the heatmap, sees similar cases, gets a clear message for a CT, enters the
API key when asked, and runs axe-core (``make axe``) for serious or critical violations.
Screenshots go to ``$CXR_TRIAGE_TEST_ARTIFACTS`` (default ``.cache/test-artifacts``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from cxr_triage.inference.registry import register_package
from helpers.bento import serve
from helpers.pipeline import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
AXE = REPO / ".cache" / "axe-core" / "axe.min.js"
API_KEY = "browser-test-key-0123456789"


def _artifacts() -> Path:
    folder = Path(os.environ.get("CXR_TRIAGE_TEST_ARTIFACTS", REPO / ".cache" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_web_page_end_to_end(tiny_pipeline, shared_data, tmp_path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install)")
    if not AXE.is_file():
        pytest.skip("axe-core is not fetched: run `make axe`")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ.setdefault("SE_OFFLINE", "true")
    dicom = shared_data / "dicom" / "RG1_UNCR.dcm"
    png = sorted((shared_data / "nih-cxr" / "images").glob("*.png"))[0]
    ct = shared_data / "dicom" / "CT_small.dcm"
    tag = register_package(tiny_pipeline.package_dir)
    shots = _artifacts()
    with serve(tmp_path, tag=tag, env={"CXR_TRIAGE_API_KEY": API_KEY}) as server:
        auth = {"X-API-Key": API_KEY}
        expected = {}
        for path in (dicom, png):
            answer = requests.post(
                f"{server.url}/predict", files={"image": (path.name, path.read_bytes())},
                headers=auth, timeout=120,
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
            expected[path.name] = answer.json()["prob_abnormal"]
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,1800"):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        wait = WebDriverWait(driver, 120)
        try:
            driver.get(f"{server.url}/ui/")
            # The key is set: the page asks for it.
            wait.until(lambda d: d.find_element(By.ID, "key-section").is_displayed())
            driver.save_screenshot(str(shots / "webui-key.png"))
            driver.find_element(By.ID, "api-key").send_keys(API_KEY)
            driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
            wait.until(lambda d: d.find_element(By.ID, "model-tag").text == tag)
            shown = {}
            for path in (dicom, png):
                driver.find_element(By.ID, "file").send_keys(str(path))
                wait.until(
                    lambda d, n=path.name: f"Done: {n}" in d.find_element(By.ID, "status").text
                )
                shown[path.name] = driver.find_element(By.ID, "prob").text
                cases = driver.find_elements(By.CSS_SELECTOR, "#similar li")
                assert len(cases) == 5, path.name
                assert driver.find_element(By.ID, "heatmap").is_displayed()
                driver.save_screenshot(str(shots / f"webui-{path.stem}.png"))
            driver.find_element(By.ID, "overlay-on").click()
            assert not driver.find_element(By.ID, "heatmap").is_displayed()
            driver.save_screenshot(str(shots / "webui-overlay-off.png"))
            driver.find_element(By.ID, "overlay-on").click()
            driver.find_element(By.ID, "file").send_keys(str(ct))
            wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
            error = driver.find_element(By.ID, "error").text
            driver.save_screenshot(str(shots / "webui-ct.png"))
            body = driver.find_element(By.TAG_NAME, "body").text
            driver.execute_script(AXE.read_text(encoding="utf-8"))
            violations = driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "axe.run(document).then(r => done(r.violations.map("
                "v => ({id: v.id, impact: v.impact, nodes: v.nodes.length}))));"
            )
            resources = driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
            )
        finally:
            driver.quit()
    for name, value in expected.items():
        assert shown[name] == f"{value:.3f}", (name, shown[name], value)
    assert "CT_small.dcm" in error and "wrong_modality" in error, error
    assert body.lower().count("not for clinical use") >= 2
    serious = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert not serious, violations
    assert resources and all(r.startswith((server.url, "data:")) for r in resources)
