from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from cxr_triage.errors import ConfigError
from cxr_triage.evaluation.metrics import reliability_curve
from cxr_triage.evaluation.plots import (
    OPERATING_POINT_GID,
    PAGE_TITLE,
    VEGA_PACKAGES,
    build_offline_template,
    main,
    operating_point_table,
    render_calibration_png,
    render_roc_png,
    roc_figure,
    roc_points,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _scores(seed: int, n: int = 300, separation: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    z = rng.normal(size=n) + separation * y_true
    return y_true, 1.0 / (1.0 + np.exp(-z))


def fake_vega_dir(root: Path) -> Path:
    """The three packages in the documented layout, each build a one-line fake script."""
    for name, version, build_file in VEGA_PACKAGES:
        script = root / name / build_file
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(f'window["fake-{name}"] = "{version}";\n')
        (root / name / "package.json").write_text(f'{{"name": "{name}", "version": "{version}"}}')
    return root


def _assert_png(path: Path, min_bytes: int = 10_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) >= 300
    assert not list(path.parent.glob(f".{path.name}.tmp*"))


def test_roc_points_trapezoid_area_matches_sklearn_auroc():
    y_true, y_score = _scores(seed=0)
    roc = roc_points(y_true, y_score)
    assert list(roc.columns) == ["fpr", "tpr"]
    assert roc.iloc[0].tolist() == [0.0, 0.0]
    assert roc.iloc[-1].tolist() == [1.0, 1.0]
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].is_monotonic_increasing
    assert len(roc) < len(y_true)  # drop_intermediate keeps only the corners
    area = np.trapezoid(roc["tpr"], roc["fpr"])
    assert area == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-12)


def test_roc_points_accepts_ties_and_unbounded_scores():
    y_true = np.array([0, 0, 1, 1, 0, 1])
    y_score = np.array([-3.0, 2.0, 2.0, 7.5, 0.0, 2.0])
    roc = roc_points(y_true, y_score)
    area = np.trapezoid(roc["tpr"], roc["fpr"])
    assert area == pytest.approx(roc_auc_score(y_true, y_score))


def test_roc_points_single_class_raises_config_error():
    with pytest.raises(ConfigError, match="both normal and abnormal"):
        roc_points([1, 1, 1], [0.2, 0.5, 0.9])


def test_roc_points_bad_labels_raise_config_error():
    with pytest.raises(ConfigError):
        roc_points([0, 2, 1], [0.2, 0.5, 0.9])


def test_render_roc_png_writes_valid_png_for_several_candidates(tmp_path):
    frames = []
    for seed, name in enumerate(["logreg", "rbf_svm", "finetuned"]):
        roc = roc_points(*_scores(seed=seed, separation=1.0 + seed))
        roc.insert(0, "candidate", name)
        frames.append(roc)
    path = tmp_path / "nested" / "roc.png"
    out = render_roc_png(
        pd.concat(frames), path, "ROC on validation", subtitle="synthetic stand-in data"
    )
    assert out == path
    _assert_png(path)


def test_render_roc_png_without_candidate_column(tmp_path):
    path = render_roc_png(roc_points(*_scores(seed=3)), tmp_path / "roc.png", "ROC on test")
    _assert_png(path)


def test_render_roc_png_replaces_existing_file(tmp_path):
    path = tmp_path / "roc.png"
    path.write_bytes(b"old")
    render_roc_png(roc_points(*_scores(seed=4)), path, "ROC")
    _assert_png(path)


def test_render_roc_png_missing_column_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="tpr"):
        render_roc_png(pd.DataFrame({"fpr": [0.0, 1.0]}), tmp_path / "roc.png", "ROC")
    assert not (tmp_path / "roc.png").exists()


def test_operating_point_table_is_the_roc_coordinates_of_sensitivity_and_specificity():
    point = operating_point_table("logreg", 0.2259, 0.95, 0.16, "test")
    assert point.columns.tolist() == ["candidate", "operating_point", "threshold", "fpr", "tpr"]
    (row,) = point.itertuples()
    assert (row.candidate, row.threshold, row.tpr) == ("logreg", 0.2259, 0.95)
    assert row.fpr == pytest.approx(0.84)
    assert row.operating_point == "threshold 0.226 (test): sens 0.95, spec 0.16"


@pytest.mark.parametrize("rate", [1.2, -0.1, float("nan")])
def test_operating_point_table_rejects_a_rate_outside_0_1(rate):
    with pytest.raises(ConfigError, match="specificity must lie in"):
        operating_point_table("logreg", 0.5, 0.9, rate, "test")


def _marked_points(figure) -> list[tuple[str, tuple[float, float]]]:
    """(legend label, data coordinates) of each operating point marker in a ROC figure."""
    (ax,) = figure.axes
    return [
        (artist.get_label(), tuple(artist.get_offsets()[0]))
        for artist in ax.collections
        if artist.get_gid() == OPERATING_POINT_GID
    ]


def test_roc_figure_marks_each_operating_point_at_its_sensitivity_and_specificity(tmp_path):
    y_true, y_score = _scores(seed=3)
    roc = roc_points(y_true, y_score).assign(candidate="logreg")
    points = pd.concat(
        [
            operating_point_table("logreg", 0.31, 0.9, 0.55, "test"),
            operating_point_table("logreg", 0.31, 0.95, 0.4, "train+val CV"),
        ],
        ignore_index=True,
    )
    marked = _marked_points(roc_figure(roc, "ROC on test", operating_points=points))
    assert [label for label, _ in marked] == points["operating_point"].tolist()
    assert [xy for _, xy in marked] == [pytest.approx((0.45, 0.9)), pytest.approx((0.6, 0.95))]
    (ax,) = roc_figure(roc, "ROC on test", operating_points=points).axes
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "threshold 0.310 (test): sens 0.90, spec 0.55" in legend
    assert not _marked_points(roc_figure(roc, "ROC on test"))  # none asked, none drawn
    path = render_roc_png(roc, tmp_path / "roc.png", "ROC on test", operating_points=points)
    _assert_png(path)


def test_roc_figure_refuses_more_operating_points_than_it_has_markers():
    roc = pd.DataFrame({"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]})
    points = pd.concat([operating_point_table("m", 0.5, 0.5, 0.5, "test")] * 4)
    with pytest.raises(ConfigError, match="at most 3 operating points"):
        roc_figure(roc, "ROC", operating_points=points)


def test_render_calibration_png_writes_valid_png(tmp_path):
    frames = []
    for seed, name in enumerate(["logreg", "finetuned"]):
        bins = reliability_curve(*_scores(seed=seed), n_bins=10)
        bins.insert(0, "candidate", name)
        frames.append(bins[["candidate", "mean_predicted", "fraction_positive", "count"]])
    path = render_calibration_png(
        pd.concat(frames), tmp_path / "calibration.png", "Calibration on validation"
    )
    _assert_png(path)


def test_render_calibration_png_empty_table_raises_config_error(tmp_path):
    empty = pd.DataFrame(columns=["candidate", "mean_predicted", "fraction_positive"])
    with pytest.raises(ConfigError, match="empty"):
        render_calibration_png(empty, tmp_path / "calibration.png", "Calibration")


def test_build_offline_template_inlines_scripts_in_load_order(tmp_path):
    vega_dir = fake_vega_dir(tmp_path / "vega")
    out = build_offline_template(vega_dir, tmp_path / "out" / "plots_offline.html")
    html = out.read_text(encoding="utf-8")
    positions = [html.index(f'window["fake-{name}"]') for name, _, _ in VEGA_PACKAGES]
    assert positions == sorted(positions)  # vega, then vega-lite, then vega-embed
    assert html.count("{plot_divs}") == 1
    assert "{scripts}" not in html
    assert "cdn.jsdelivr" not in html and "<script src" not in html
    assert html.lstrip().startswith("<!DOCTYPE html>")


def test_build_offline_template_titles_the_page(tmp_path):
    out = build_offline_template(fake_vega_dir(tmp_path / "vega"), tmp_path / "t.html")
    page = out.read_text(encoding="utf-8")
    assert f"<title>{PAGE_TITLE}</title>" in page and f"<h1>{PAGE_TITLE}</h1>" in page
    custom = build_offline_template(
        tmp_path / "vega", tmp_path / "c.html", title="a <b> {plot_divs}", subtitle="s"
    ).read_text(encoding="utf-8")
    # escaped, and no DVC placeholder made out of the text: {plot_divs} stays the only one
    assert "<h1>a &lt;b&gt; &#123;plot_divs}</h1>" in custom
    assert custom.count("{plot_divs}") == 1


def test_build_offline_template_escapes_closing_script_tags(tmp_path):
    vega_dir = fake_vega_dir(tmp_path / "vega")
    (vega_dir / "vega-embed/build/vega-embed.min.js").write_text('var s = "</script>";\n')
    html = build_offline_template(vega_dir, tmp_path / "t.html").read_text(encoding="utf-8")
    assert 'var s = "<\\/script>";' in html
    assert html.count("</script>") == len(VEGA_PACKAGES)


def test_build_offline_template_missing_file_raises_config_error(tmp_path):
    vega_dir = fake_vega_dir(tmp_path / "vega")
    (vega_dir / "vega-lite/build/vega-lite.min.js").unlink()
    with pytest.raises(ConfigError) as excinfo:
        build_offline_template(vega_dir, tmp_path / "t.html")
    message = str(excinfo.value)
    assert str(vega_dir / "vega-lite/build/vega-lite.min.js") in message
    assert "npm pack" in message and "vega-lite@5.2.0" in message
    assert "vega/build/vega.min.js," not in message  # present files are not reported
    assert not (tmp_path / "t.html").exists()


def test_build_offline_template_rejects_dvc_placeholder_in_script(tmp_path):
    vega_dir = fake_vega_dir(tmp_path / "vega")
    (vega_dir / "vega/build/vega.min.js").write_text('var t = "{scripts}";\n')
    with pytest.raises(ConfigError, match="scripts"):
        build_offline_template(vega_dir, tmp_path / "t.html")


def test_main_builds_template(tmp_path):
    vega_dir = fake_vega_dir(tmp_path / "vega")
    main(["--vega-dir", str(vega_dir), "--out", str(tmp_path / "t.html")])
    assert "{plot_divs}" in (tmp_path / "t.html").read_text(encoding="utf-8")


def test_main_missing_packages_exits_1(tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        main(["--vega-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "t.html")])
    assert excinfo.value.code == 1
