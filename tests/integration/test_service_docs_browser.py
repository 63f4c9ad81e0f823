"""The service's docs page in headless Chromium (selenium + Debian's chromium/chromedriver).

Saves a screenshot under ``$CXR_TRIAGE_TEST_ARTIFACTS`` (default ``.cache/test-artifacts``,
git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxr_triage.inference.registry import register_package
from helpers.bento import serve
from helpers.pipeline import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _artifacts() -> Path:
    folder = Path(os.environ.get("CXR_TRIAGE_TEST_ARTIFACTS", REPO / ".cache" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_service_docs_page_shows_the_product_from_local_assets(tiny_pipeline, tmp_path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ.setdefault("SE_OFFLINE", "true")  # no Selenium Manager download attempts
    tag = register_package(tiny_pipeline.package_dir)
    with serve(tmp_path, tag=tag) as server:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,2200"):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        try:
            driver.get(f"{server.url}/")
            WebDriverWait(driver, 60).until(
                lambda d: "cxr-triage" in d.find_element(By.CSS_SELECTOR, "#swagger-ui").text
            )
            WebDriverWait(driver, 30).until(
                lambda d: "/predict_batch" in d.find_element(By.TAG_NAME, "body").text
            )
            text = driver.find_element(By.TAG_NAME, "body").text
            title = driver.find_element(By.CSS_SELECTOR, ".info .title").text
            resources = driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
            )
            driver.save_screenshot(str(_artifacts() / "service-docs.png"))
        finally:
            driver.quit()
    assert "not for clinical use" in text.lower()
    assert "chest X-ray Normal/Abnormal triage" in title and tag in title
    assert "prediction_log_unavailable" in text and "wrong_modality" in text  # the error table
    assert resources and all(r.startswith(server.url) for r in resources), resources
