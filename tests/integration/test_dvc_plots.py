"""`dvc plots show` with this repository's plot definitions and `.dvc/plots` templates."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxr_triage.evaluation.plots import (
    PAGE_TITLE,
    VEGA_PACKAGES,
    build_offline_template,
    fetch_command,
)
from helpers.commands import run_command
from helpers.pipeline import REPO

pytestmark = pytest.mark.integration

CANDIDATES = ("logreg", "rbf_svm")

PLOT_IDS = ("roc_validation", "calibration_validation", "roc_test")


_run = functools.partial(run_command, timeout=300, include_stderr=False)


def _fake_vega_dir(root: Path) -> Path:
    for name, _, build_file in VEGA_PACKAGES:
        script = root / name / build_file
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(f'window["fake-{name}"] = true;\n')
    return root


def _layer(content: dict, mark: str) -> tuple[dict, list[dict]]:
    """The layer of a `by_candidate` spec drawn with ``mark``, and DVC's data points."""
    (layer,) = [layer for layer in content["layer"] if layer["mark"]["type"] == mark]
    return layer, content["data"]["values"]


def _series_layer(content: dict) -> tuple[dict, list[dict]]:
    """The curves' layer (one line per candidate) and the rows it draws (not operating points)."""
    layer, rows = _layer(content, "line")
    assert layer["transform"] == [{"filter": "!isValid(datum.operating_point)"}]
    return layer, [row for row in rows if "operating_point" not in row]


def test_dvc_plots_show_json_draws_one_series_per_candidate(plots_repo):
    shown = json.loads(_run(["dvc", "plots", "show", "--json"], plots_repo))
    assert not shown.get("errors"), shown.get("errors")
    assert set(shown["data"]) == set(PLOT_IDS)
    expected = {"roc_validation": set(CANDIDATES), "calibration_validation": set(CANDIDATES)}
    expected["roc_test"] = {"rbf_svm"}
    for plot_id, candidates in expected.items():
        (plot,) = shown["data"][plot_id]
        layer, rows = _series_layer(plot["content"])
        assert plot["content"]["encoding"]["color"]["field"] == "candidate"
        assert {row["candidate"] for row in rows} == candidates
        assert {row["rev"] for row in rows} == {"workspace"}
    content = shown["data"]["roc_validation"][0]["content"]
    assert (content["encoding"]["x"]["field"], content["encoding"]["y"]["field"]) == (
        "fpr",
        "tpr",
    )
    _, curve_rows = _series_layer(content)
    counts = pd.Series([row["candidate"] for row in curve_rows]).value_counts()
    assert counts.to_dict() == {"logreg": 4, "rbf_svm": 3}


def test_dvc_roc_plots_mark_the_operating_point(plots_repo):
    shown = json.loads(_run(["dvc", "plots", "show", "--json"], plots_repo))
    for plot_id, where, (fpr, tpr) in (
        ("roc_validation", "train+val CV", (0.2, 0.7)),
        ("roc_test", "test", (0.25, 0.65)),
    ):
        (plot,) = shown["data"][plot_id]
        layer, rows = _layer(plot["content"], "point")
        assert layer["transform"] == [{"filter": "isValid(datum.operating_point)"}]
        assert layer["encoding"]["shape"]["field"] == "operating_point"
        (point,) = [row for row in rows if "operating_point" in row]
        assert f"({where})" in point["operating_point"] and point["candidate"] == "rbf_svm"
        assert (float(point["fpr"]), float(point["tpr"])) == pytest.approx((fpr, tpr))
        assert "threshold" in plot["content"]["title"]["text"]


def test_dvc_plots_show_html_template_renders_without_cdn(plots_repo, tmp_path):
    template = build_offline_template(_fake_vega_dir(tmp_path / "vega"), tmp_path / "t.html")
    _run(
        ["dvc", "plots", "show", "--html-template", str(template), "-o", str(tmp_path / "html")],
        plots_repo,
    )
    html = (tmp_path / "html" / "index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in html
    for name, _, _ in VEGA_PACKAGES:
        assert f'window["fake-{name}"] = true;' in html
    assert html.count("vegaEmbed(") == len(PLOT_IDS)
    for plot_id in PLOT_IDS:
        assert f'id = "{plot_id}"' in html
    assert '"field": "candidate"' in html and "rbf_svm" in html
    assert "{plot_divs}" not in html and "{scripts}" not in html
    assert f"<h1>{PAGE_TITLE}</h1>" in html


@pytest.mark.slow
def test_dvc_plots_page_renders_offline_with_real_vega(plots_repo, tmp_path):
    """Real vega builds (REPO/.cache/vega, else `npm pack`); with Chromium, count drawn charts."""
    vega_dir = REPO / ".cache" / "vega"
    if not all((vega_dir / name / build).is_file() for name, _, build in VEGA_PACKAGES):
        if shutil.which("npm") is None:
            pytest.skip("needs npm (or a filled .cache/vega from `make plots`) for the real vega")
        vega_dir = tmp_path / "vega"
        _run(["bash", "-c", fetch_command(vega_dir)], tmp_path)
    template = build_offline_template(vega_dir, tmp_path / "plots_offline.html")
    out = tmp_path / "html"
    _run(["dvc", "plots", "show", "--html-template", str(template), "-o", str(out)], plots_repo)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in html and len(html) > 500_000

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is absent: the page was built but its rendering is not checked")
    dom = _run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (out / "index.html").as_uri(),
        ],
        tmp_path,
    )
    # vega-embed draws each chart on a <canvas class="marks">; the CDN page has none offline.
    assert dom.count('class="marks"') == len(PLOT_IDS)
