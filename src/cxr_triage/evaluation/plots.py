"""Plots of the model comparison: ROC and reliability curves, and DVC's offline HTML page.

Two outputs for two audiences:

* PNG files (:func:`render_roc_png`, :func:`render_calibration_png`), drawn with matplotlib's Agg
  canvas (no pyplot, no display, no global backend switch), one line per candidate;
* the data behind ``dvc plots show``: :func:`roc_points` gives the small ``fpr, tpr`` table that a
  stage writes as CSV (with a ``candidate`` column added), drawn by the Vega-Lite template
  ``.dvc/plots/by_candidate.json`` (colour = candidate, dash = revision).

``dvc plots show`` writes an ``index.html`` that loads vega, vega-lite and vega-embed from
cdn.jsdelivr.net, so the page is blank without internet. :func:`build_offline_template` writes an
HTML template for ``dvc plots show --html-template`` with the three libraries inlined and no
``{scripts}`` placeholder (which is where DVC would put the CDN tags). It expects ``vega_dir`` to
hold each npm package unpacked into a folder named after the package::

    <vega_dir>/vega/build/vega.min.js                 npm pack vega@5.20.2
    <vega_dir>/vega-lite/build/vega-lite.min.js       npm pack vega-lite@5.2.0
    <vega_dir>/vega-embed/build/vega-embed.min.js     npm pack vega-embed@6.18.2

(an npm tarball's root folder is ``package/``, hence ``tar --strip-components=1``; see
:func:`fetch_command`). The versions are the ones dvc-render 1.0.2 (DVC 3.67) loads.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxr_triage.atomic import atomic_path
from cxr_triage.errors import ConfigError, CxrError
from cxr_triage.evaluation.metrics import _check_scores

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "OPERATING_POINT_GID",
    "PAGE_SUBTITLE",
    "PAGE_TITLE",
    "VEGA_PACKAGES",
    "build_offline_template",
    "fetch_command",
    "main",
    "operating_point_table",
    "render_calibration_png",
    "render_roc_png",
    "roc_figure",
    "roc_points",
]

log = logging.getLogger(__name__)

#: (npm package, version, minified browser build inside the package), in load order.
VEGA_PACKAGES: tuple[tuple[str, str, str], ...] = (
    ("vega", "5.20.2", "build/vega.min.js"),
    ("vega-lite", "5.2.0", "build/vega-lite.min.js"),
    ("vega-embed", "6.18.2", "build/vega-embed.min.js"),
)

# dvc-render fills these with str.replace over the whole page, scripts included.
_DVC_PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")

_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>__TITLE__</title>
<!-- vega, vega-lite and vega-embed are inlined below so that the page renders offline;
     built by `python -m cxr_triage.evaluation.plots` -->
__INLINE_SCRIPTS__
<style>
body {font-family: sans-serif;}
table {border-spacing: 15px;}
</style>
</head>
<body>
<h1>__TITLE__</h1>
<p>__SUBTITLE__</p>
{plot_divs}
</body>
</html>
"""


def roc_points(y_true: Any, y_score: Any) -> pd.DataFrame:
    """ROC curve as a small table, ready to be written as a DVC plot.

    Uses sklearn's ``roc_curve(drop_intermediate=True)``: only the corners of the curve are
    kept, so the table stays small and the trapezoid area under it equals the AUROC.

    Args:
        y_true: 0/1 labels, 1 = abnormal.
        y_score: scores of class 1 (any real values; only their order matters).

    Returns:
        Columns ``fpr`` and ``tpr``, from (0, 0) to (1, 1), in curve order.

    Raises:
        ConfigError: on bad inputs, or when ``y_true`` holds a single class (no ROC curve).
    """
    from sklearn.metrics import roc_curve

    y_true_arr, y_score_arr = _check_scores(y_true, y_score, probabilities=False)
    n_positive = int(y_true_arr.sum())
    if n_positive == 0 or n_positive == y_true_arr.size:
        raise ConfigError(
            f"a ROC curve needs both normal and abnormal studies; got {y_true_arr.size} studies "
            f"with {n_positive} abnormal"
        )
    fpr, tpr, _ = roc_curve(y_true_arr, y_score_arr, drop_intermediate=True)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr})


def operating_point_table(
    candidate: str, threshold: float, sensitivity: float, specificity: float, where: str
) -> pd.DataFrame:
    """One operating point as a one-row table, in ROC coordinates, to mark on a ROC plot.

    Written beside a stage's ``roc.csv`` (``plots/operating_point.csv``) for DVC's ROC plots
    (the ``by_candidate`` template draws rows with an ``operating_point`` label as large
    points) and passed to :func:`render_roc_png`.

    Args:
        candidate: the model whose curve the point lies on (the winner).
        threshold: the operating threshold on the calibrated probability of abnormal.
        sensitivity: true positive rate at ``threshold``, in [0, 1].
        specificity: true negative rate at ``threshold``, in [0, 1].
        where: the data the rates were measured on, e.g. ``"test"`` or ``"train+val CV"``.

    Returns:
        Columns ``candidate``, ``operating_point`` (the legend label, with the threshold and
        the rates), ``threshold``, ``fpr`` (= 1 - specificity) and ``tpr`` (= sensitivity).

    Raises:
        ConfigError: when a rate lies outside [0, 1] (or is NaN).
    """
    for name, rate in (("sensitivity", sensitivity), ("specificity", specificity)):
        if not 0.0 <= float(rate) <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1] to be drawn on a ROC plot; got {rate}")
    label = f"threshold {threshold:.3f} ({where}): sens {sensitivity:.2f}, spec {specificity:.2f}"
    return pd.DataFrame(
        {
            "candidate": [candidate],
            "operating_point": [label],
            "threshold": [float(threshold)],
            "fpr": [1.0 - float(specificity)],
            "tpr": [float(sensitivity)],
        }
    )


def _trapezoid_auc(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.trapezoid(y, x))


def _require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(f"{what} table lacks column(s) {missing}; it has {list(table.columns)}")
    if table.empty:
        raise ConfigError(f"{what} table is empty; nothing to plot")


def _by_candidate(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Rows grouped by ``candidate`` in order of appearance (one group if the column is absent)."""
    if "candidate" not in table.columns:
        return [("model", table)]
    return [(str(name), group) for name, group in table.groupby("candidate", sort=False)]


def _new_axes(title: str, subtitle: str | None) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title if not subtitle else f"{title}\n{subtitle}", fontsize=11)
    # A little room so that markers at 0 and 1 are not cut in half.
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save_png_atomically(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    log.info("wrote %s", path)


# Marker of each operating point, in the order given (filled first, then hollow).
_POINT_STYLES = (
    {"marker": "D", "s": 70, "color": "black", "zorder": 4},
    {"marker": "o", "s": 90, "facecolors": "none", "edgecolors": "crimson", "zorder": 4},
    {"marker": "s", "s": 70, "facecolors": "none", "edgecolors": "darkorange", "zorder": 4},
)
#: ``gid`` of the operating point markers in a ROC figure (an SVG export names them so).
OPERATING_POINT_GID = "operating_point"


def render_roc_png(
    roc: pd.DataFrame,
    path: str | Path,
    title: str,
    *,
    subtitle: str | None = None,
    operating_points: pd.DataFrame | None = None,
) -> Path:
    """Draw ROC curves, one line per candidate, with the chance diagonal and operating points.

    Args:
        roc: columns ``fpr`` and ``tpr`` (as from :func:`roc_points`) and optionally
            ``candidate``; rows of one candidate in curve order.
        path: PNG file to write (parents created; replaced atomically).
        title: plot title, e.g. ``"ROC on validation"``.
        subtitle: optional second title line, e.g. a data caveat or the split size.
        operating_points: rows from :func:`operating_point_table` (``fpr``, ``tpr``,
            ``operating_point`` label), each drawn as a marker with its label in the legend;
            up to three.

    Returns:
        ``path`` as a Path.

    Raises:
        ConfigError: when ``fpr`` or ``tpr`` is missing or a table is empty, or when more
            than three operating points are given.
    """
    fig = roc_figure(roc, title, subtitle=subtitle, operating_points=operating_points)
    path = Path(path)
    _save_png_atomically(fig, path)
    return path


def roc_figure(
    roc: pd.DataFrame,
    title: str,
    *,
    subtitle: str | None = None,
    operating_points: pd.DataFrame | None = None,
) -> Figure:
    """The figure :func:`render_roc_png` saves (same arguments, less the path).

    The operating point markers carry ``gid`` :data:`OPERATING_POINT_GID`.
    """
    _require_columns(roc, ["fpr", "tpr"], "ROC")
    if operating_points is not None:
        _require_columns(operating_points, ["fpr", "tpr", "operating_point"], "operating point")
        if len(operating_points) > len(_POINT_STYLES):
            raise ConfigError(
                f"at most {len(_POINT_STYLES)} operating points fit one ROC figure; "
                f"got {len(operating_points)}"
            )
    fig, ax = _new_axes(title, subtitle)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for name, curve in _by_candidate(roc):
        fpr = curve["fpr"].to_numpy(dtype=float)
        tpr = curve["tpr"].to_numpy(dtype=float)
        auc = _trapezoid_auc(fpr, tpr)
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUROC {auc:.3f})")
    if operating_points is not None:
        for style, row in zip(_POINT_STYLES, operating_points.itertuples(), strict=False):
            ax.scatter(
                [float(row.fpr)],
                [float(row.tpr)],
                label=str(row.operating_point),
                gid=OPERATING_POINT_GID,
                **style,
            )
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def render_calibration_png(
    calibration: pd.DataFrame, path: str | Path, title: str, *, subtitle: str | None = None
) -> Path:
    """Draw reliability curves, one line per candidate, with the diagonal of perfect calibration.

    Args:
        calibration: columns ``mean_predicted`` and ``fraction_positive`` (one row per bin, as
            from :func:`cxr_triage.evaluation.metrics.reliability_curve`), optionally
            ``candidate`` and ``count`` (marker area grows with the bin's study count).
        path: PNG file to write (parents created; replaced atomically).
        title: plot title, e.g. ``"Calibration on validation"``.
        subtitle: optional second title line.

    Returns:
        ``path`` as a Path.

    Raises:
        ConfigError: when a required column is missing or the table is empty.
    """
    _require_columns(calibration, ["mean_predicted", "fraction_positive"], "calibration")
    path = Path(path)
    fig, ax = _new_axes(title, subtitle)
    ax.plot(
        [0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated"
    )
    for name, bins in _by_candidate(calibration):
        bins = bins.sort_values("mean_predicted")
        x = bins["mean_predicted"].to_numpy(dtype=float)
        y = bins["fraction_positive"].to_numpy(dtype=float)
        (line,) = ax.plot(x, y, linewidth=1.5, label=name)
        if "count" in bins.columns:
            count = bins["count"].to_numpy(dtype=float)
            sizes = 12 + 120 * count / max(float(count.max()), 1.0)
        else:
            sizes = np.full(x.shape, 20.0)
        ax.scatter(x, y, s=sizes, color=line.get_color(), alpha=0.8, zorder=3)
    ax.set_xlabel("Mean predicted probability (abnormal)")
    ax.set_ylabel("Fraction abnormal")
    ax.legend(loc="upper left", fontsize=9)
    _save_png_atomically(fig, path)
    return path


def fetch_command(vega_dir: str | Path) -> str:
    """Shell command that fills ``vega_dir`` in the layout :func:`build_offline_template` reads.

    Needs npm and the npm registry once; the result can be cached (e.g. ``.cache/vega/``).
    """
    quoted = shlex.quote(str(vega_dir))
    specs = " ".join(f"{name}@{version}" for name, version, _ in VEGA_PACKAGES)
    tarballs = " ".join(f"{name}-{version}" for name, version, _ in VEGA_PACKAGES)
    # An npm tarball's root folder is package/: strip it so that vega/build/... is the layout.
    return (
        f"mkdir -p {quoted} && cd {quoted} && npm pack --silent {specs} && "
        f'for p in {tarballs}; do n="${{p%-*}}"; rm -rf "$n" && mkdir "$n" && '
        'tar -xzf "$p.tgz" -C "$n" --strip-components=1; done'
    )


def _read_script(vega_dir: Path, name: str, version: str, build_file: str) -> str:
    package_json = vega_dir / name / "package.json"
    if package_json.is_file():
        found = json.loads(package_json.read_text(encoding="utf-8")).get("version")
        if found != version:
            log.warning(
                "%s is version %s, DVC's plots were written for %s", package_json, found, version
            )
    script = (vega_dir / name / build_file).read_text(encoding="utf-8")
    for placeholder in _DVC_PLACEHOLDERS:
        if placeholder in script:
            raise ConfigError(
                f"{vega_dir / name / build_file} contains {placeholder!r}, which DVC would "
                "replace inside the script; use the package version listed in VEGA_PACKAGES"
            )
    # "</script" inside a string literal would end the inline <script> element early; "<\/" is
    # the same string in JavaScript.
    return script.replace("</script", "<\\/script")


#: The plots page's title and the line under it (:func:`build_offline_template`).
PAGE_TITLE = "cxr-triage: model comparison and test ROC"
PAGE_SUBTITLE = (
    "ROC and calibration of every candidate out of fold on train+val, then the winner's ROC on "
    "the test split; the large point on a ROC curve is the operating threshold's sensitivity "
    "and 1 - specificity. Headline figures: `dvc metrics show`; experiments: `make exp`."
)


def build_offline_template(
    vega_dir: str | Path,
    out: str | Path,
    *,
    title: str = PAGE_TITLE,
    subtitle: str = PAGE_SUBTITLE,
) -> Path:
    """Write an HTML template for ``dvc plots show --html-template`` that renders offline.

    Args:
        vega_dir: folder holding ``vega/``, ``vega-lite/`` and ``vega-embed/``, each an unpacked
            npm tarball (see the module docstring and :func:`fetch_command`).
        out: HTML file to write (parents created; replaced atomically).
        title: the page's ``<title>`` and heading (HTML-escaped).
        subtitle: a paragraph under the heading (HTML-escaped).

    Returns:
        ``out`` as a Path.

    Raises:
        ConfigError: when a package's minified build is missing; the message names the files
            and the command that fetches them.
    """
    vega_dir = Path(vega_dir)
    out = Path(out)
    missing = [
        str(vega_dir / name / build_file)
        for name, _, build_file in VEGA_PACKAGES
        if not (vega_dir / name / build_file).is_file()
    ]
    if missing:
        raise ConfigError(
            f"missing {', '.join(missing)}; fetch the packages once with "
            f"`{fetch_command(vega_dir)}` (or `make plots`)"
        )
    scripts = "\n".join(
        f"<script>/* {name}@{version} */\n{_read_script(vega_dir, name, version, build)}\n"
        "</script>"
        for name, version, build in VEGA_PACKAGES
    )
    # str.replace, not str.format: the page's CSS braces and DVC's placeholders stay literal.
    # "{" as an entity: DVC replaces {plot_divs} etc. anywhere in the page, text included
    texts = {"__TITLE__": title, "__SUBTITLE__": subtitle}
    page = _PAGE
    for marker, text in texts.items():
        page = page.replace(marker, html.escape(text).replace("{", "&#123;"))
    page = page.replace("__INLINE_SCRIPTS__", scripts)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("wrote %s (%d KB) with %s inlined", out, len(page) // 1024, vega_dir)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cxr_triage.evaluation.plots --vega-dir DIR --out FILE``: build the template."""
    from cxr_triage.logs import configure_logging

    parser = argparse.ArgumentParser(
        prog="python -m cxr_triage.evaluation.plots",
        description="Build an HTML template for `dvc plots show --html-template` that has vega, "
        "vega-lite and vega-embed inlined, so that the plots render without internet.",
    )
    parser.add_argument(
        "--vega-dir",
        type=Path,
        required=True,
        help="folder with vega/, vega-lite/, vega-embed/ (unpacked npm tarballs)",
    )
    parser.add_argument("--out", type=Path, required=True, help="HTML template to write")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        build_offline_template(args.vega_dir, args.out)
    except CxrError as exc:
        log.error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
