"""``generate_dataset``: plan a cohort, render and write every image, then the labels table."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from cxr_triage.atomic import atomic_dir
from cxr_triage.data.synth import render
from cxr_triage.data.synth.cohort import ImageSpec, plan_images
from cxr_triage.data.synth.config import SynthConfig
from cxr_triage.data.synth.dicom import write_synthetic_image
from cxr_triage.data.synth.sites import SiteProfile, site_profile
from cxr_triage.errors import ConfigError
from cxr_triage.vocabulary import NO_FINDING

__all__ = ["BOXES_FILE", "BOX_COLUMNS", "LABEL_COLUMNS", "generate_dataset"]

logger = logging.getLogger(__name__)

# Each in-lung finding's box, beside labels.csv (as NIH's BBox_List_2017.csv, in stored pixels).
BOXES_FILE = "lesion_boxes.csv"
BOX_COLUMNS = ("Image Index", "Finding Label", "x", "y", "w", "h")
# Columns as pandas reads Data_Entry_2017.csv: its header "OriginalImage[Width,Height]" holds an
# unquoted comma, so one header name spans two value columns (and the same for the spacing).
LABEL_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
    "Site",
)

_Job = tuple[ImageSpec, SiteProfile, SynthConfig, int, str]


def _make_image(job: _Job) -> list[dict[str, object]]:
    """Render and write one image (runs in a worker process when ``workers`` > 1); return the
    rows of its findings' boxes."""
    spec, site, config, seed, images_dir = job
    pixels, boxes = render.render_image_with_boxes(spec, site, config)
    write_synthetic_image(Path(images_dir) / spec.image_index, pixels, spec, site, seed)
    return [
        {"Image Index": spec.image_index, "Finding Label": b.finding, "x": b.x, "y": b.y,
         "w": b.w, "h": b.h}
        for b in boxes
    ]  # fmt: skip


def _run_jobs(jobs: list[_Job], workers: int) -> Iterator[list[dict[str, object]]]:
    if workers == 1:
        for job in jobs:
            yield _make_image(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(
            _make_image, jobs, chunksize=max(1, min(32, len(jobs) // (4 * workers)))
        )


def _label_row(spec: ImageSpec, site: SiteProfile) -> dict[str, object]:
    return {
        "Image Index": spec.image_index,
        "Finding Labels": "|".join(spec.labels) if spec.labels else NO_FINDING,
        "Follow-up #": spec.followup,
        "Patient ID": spec.patient_id,
        "Patient Age": spec.age,
        "Patient Gender": spec.sex,
        "View Position": spec.view,
        "OriginalImage[Width": spec.cols,
        "Height]": spec.rows,
        "OriginalImagePixelSpacing[x": spec.pixel_spacing,
        "y]": spec.pixel_spacing,
        "Site": site.name,
    }


def _check_arguments(
    out_dir: Path, n: int, seed: int, config: SynthConfig, workers: int, overwrite: bool
) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ConfigError(f"synth: n must be a positive number of images, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"synth: seed must be an integer >= 0, got {seed!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"synth: workers must be an integer >= 1, got {workers!r}")
    if not isinstance(config, SynthConfig):
        raise ConfigError(f"synth: config must be a SynthConfig, got {type(config).__name__}")
    if (
        out_dir.exists()
        and not (out_dir.is_dir() and not any(out_dir.iterdir()))
        and not overwrite
    ):
        raise ConfigError(
            f"synth: {out_dir} already exists and is not empty; remove it or pass overwrite=True"
        )


def generate_dataset(
    out_dir: Path,
    n: int,
    site: str,
    seed: int,
    config: SynthConfig = SynthConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    workers: int = 1,
    *,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Generate ``n`` synthetic chest radiographs of one site with ChestX-ray14-style labels.

    Writes ``out_dir/images/<Image Index>`` (DICOM), ``out_dir/labels.csv`` (the header of
    ChestX-ray14's ``Data_Entry_2017.csv`` plus ``Site``) and ``out_dir/lesion_boxes.csv``
    (:data:`BOX_COLUMNS`, as NIH's ``BBox_List_2017.csv``: one row per in-lung finding, its box
    in stored pixels; the images are the same with or without it). The result is
    byte-identical for the same ``(n, site, seed, config)`` whatever ``workers`` is. Files are
    written into a hidden temporary sibling folder that is renamed to ``out_dir`` only when
    everything succeeded, so a failed or killed run never leaves a partial ``out_dir``.

    Args:
        out_dir: folder to create.
        n: number of images (> 0).
        site: a key of :data:`~cxr_triage.data.synth.SITE_PRESETS` or any new site name (see
            :func:`~cxr_triage.data.synth.site_profile`).
        seed: dataset seed (>= 0).
        config: difficulty and content knobs.
        workers: processes to render with (>= 1).
        overwrite: replace an existing non-empty ``out_dir``; otherwise that is an error.

    Returns:
        The labels table as written (columns :data:`LABEL_COLUMNS`, as pandas reads the CSV).

    Raises:
        ConfigError: an argument is out of range or ``out_dir`` exists and is not empty.
    """
    out_dir = Path(out_dir)
    _check_arguments(out_dir, n, seed, config, workers, overwrite)
    profile = site_profile(site)
    start = time.perf_counter()
    specs = plan_images(n, profile, seed, config)
    with atomic_dir(out_dir) as tmp:
        images = tmp / "images"
        images.mkdir()
        jobs = [(spec, profile, config, seed, str(images)) for spec in specs]
        boxes: list[dict[str, object]] = []
        for done, rows in enumerate(_run_jobs(jobs, min(workers, n)), start=1):
            boxes += rows
            if done % 500 == 0:
                logger.info("synth %s: %d/%d images", profile.name, done, n)
        pd.DataFrame(boxes, columns=list(BOX_COLUMNS)).to_csv(
            tmp / BOXES_FILE, index=False, lineterminator="\n"
        )
        table = pd.DataFrame(
            [_label_row(spec, profile) for spec in specs], columns=list(LABEL_COLUMNS)
        )
        table.to_csv(tmp / "labels.csv", index=False, lineterminator="\n")
    elapsed = time.perf_counter() - start
    logger.info(
        "synth %s: wrote %d images (%d patients, %.0f%% abnormal) to %s in %.1f s (%.1f images/s)",
        profile.name,
        n,
        table["Patient ID"].nunique(),
        100 * float((table["Finding Labels"] != NO_FINDING).mean()),
        out_dir,
        elapsed,
        n / elapsed,
    )
    return table
