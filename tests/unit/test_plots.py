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
    VEGA_PACKAGES,
    build_offline_template,
    main,
    render_calibration_png,
    render_roc_png,
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
