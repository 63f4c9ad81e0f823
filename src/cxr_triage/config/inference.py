"""Sections of what the radiologist sees: the input quality gate, explanations, similar cases.

The ``package`` stage records ``qc``, ``explain`` and ``similar`` in the model package, so the
service, ``cxr-triage predict``/``explain``/``similar`` and the ``evaluate``/``explain`` stages
apply the same settings (as they do the reader's limits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["QC_ACTIONS", "ExplainParams", "QcActions", "QcParams", "SimilarParams"]

QcAction = Literal["refuse", "warn", "off"]
QC_ACTIONS: tuple[str, ...] = ("refuse", "warn", "off")


@dataclass(frozen=True)
class QcActions:
    """What each check of the quality gate does when it fails: ``refuse`` (HTTP 422
    ``qc_failed``, no probability), ``warn`` (scored, the verdict says why) or ``off``.

    Header checks read the DICOM header (or the caller's metadata); content checks read only
    the pixels (see :mod:`cxr_triage.inference.qc`).
    """

    view: QcAction = "refuse"  # ViewPosition lateral (LL, RL, LATERAL)
    min_size: QcAction = "refuse"  # shorter side below qc.min_size_px
    pediatric: QcAction = "refuse"  # PatientAge below qc.adult_min_age (when known)
    burned_in_annotation: QcAction = "warn"  # BurnedInAnnotation YES
    inverted: QcAction = "refuse"  # content: the inverted image looks more like a chest film
    rotated: QcAction = "refuse"  # content: a 90-degree rotation looks more like a chest film
    # content: unlike the package's training images. A package trained on the synthetic
    # stand-in finds every real radiograph unlike them: warn by default (README, QC).
    out_of_distribution: QcAction = "warn"


@dataclass(frozen=True)
class QcParams:
    """The input quality gate (:mod:`cxr_triage.inference.qc`).

    Attributes:
        actions: refuse / warn / off per check.
        min_size_px: the shorter image side below which ``min_size`` fails.
        adult_min_age: ``pediatric`` fails below this age in years (DICOM PatientAge).
        lateral_views: ViewPosition values that fail ``view``.
        grid: side of the coarse layout the content checks read (``grid x grid`` cell means).
        augment_copies: augmented copies of each train image the orientation model learns from.
        calibration_quantile: ``inverted``/``rotated`` fail below ``min(0, q)``, ``q`` this
            quantile of the val images' margins (0: the transformed image looks more like a
            chest film than the image itself).
        ood_quantile: ``out_of_distribution`` fails above this quantile of the val images'
            distances ...
        ood_margin: ... times this margin.
        benchmark_dir: where ``evaluate`` finds real images to measure the gate's pass and
            catch shares (``nih-cxr/``, ``dicom/``); null, or absent on disk: not measured.
    """

    actions: QcActions = field(default_factory=QcActions)
    min_size_px: int = 256
    adult_min_age: float = 18.0
    lateral_views: list[str] = field(default_factory=lambda: ["LL", "RL", "LATERAL", "LAT"])
    grid: int = 16
    augment_copies: int = 3
    calibration_quantile: float = 0.005
    ood_quantile: float = 0.995
    ood_margin: float = 1.5
    benchmark_dir: str | None = "../shared/data"


@dataclass(frozen=True)
class ExplainParams:
    """Explanations of the packaged score (:mod:`cxr_triage.inference.explain`) and the
    ``explain`` stage that measures them.

    Attributes:
        method: ``auto`` (the rule: Grad-CAM for a network with a differentiable head, else
            occlusion), ``gradcam`` or ``occlusion``.
        occlusion_mask: side of the occluding patch as a fraction of the image side.
        occlusion_overlap: overlap of neighbouring patches (0: a tiling).
        max_images: test images for the localisation and faithfulness figures (at most).
        sanity_images: test images for the randomisation test (it costs one map per layer).
        n_steps: points of each deletion/insertion curve, beyond the first.
        n_boot: patient-bootstrap resamples of every CI.
        bbox_csv: NIH's radiologist boxes (``BBox_List_2017.csv.gz``), used when the pipeline
            ingested the NIH images they belong to; null: none.
    """

    method: Literal["auto", "gradcam", "occlusion"] = "auto"
    occlusion_mask: float = 0.25
    occlusion_overlap: float = 0.5
    max_images: int = 60
    sanity_images: int = 12
    n_steps: int = 20
    n_boot: int = 1000
    bbox_csv: str | None = "../shared/data/nih-cxr/BBox_List_2017.csv.gz"


@dataclass(frozen=True)
class SimilarParams:
    """Similar past cases (:mod:`cxr_triage.inference.similar`).

    Attributes:
        k: neighbours returned by default (the retrieval figures use it too).
        thumbnails: store a small thumbnail of each reference image in the package (images
            flagged with burned-in annotation never get one).
        thumbnail_size: thumbnail side in pixels.
        exact_max_rows: up to this many reference images the search is exact (numpy); past
            it, a FAISS HNSW index (benchmarks/bench_similar.py measured where that pays).
    """

    k: int = 5
    thumbnails: bool = True
    thumbnail_size: int = 64
    exact_max_rows: int = 100_000
