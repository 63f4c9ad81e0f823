"""How the quality gate does on inputs it should pass and inputs it should catch (the model
card's QC table, measured by the ``evaluate`` stage).

Input sets (each one row of the table; shares with patient-bootstrap 95% CIs where patients
are known, else per image):

- the pipeline's own test images (should pass), and their inverted and 90-degree-rotated copies
  (should be caught: half turned left, half right);
- real NIH ChestX-ray14 images in ``<benchmark_dir>/nih-cxr`` (``labels.csv``): adults (18+,
  should pass), their inverted and rotated copies, and children aged 3-17 (should be caught),
  the latter twice: with only the pixels (a PNG says nothing of age) and with the age a DICOM
  header would carry (``PatientAge``);
- non-chest images: the shared DICOM corpus' other body parts and modalities in
  ``<benchmark_dir>/dicom`` (CT, MR, NM; their pixels as if sent without a header, since the
  reader already refuses them by Modality) and the photographs and other images bundled with
  matplotlib (``matplotlib.get_data_path()/sample_data``; scikit-image's ``skimage.data`` is
  not installed here), turned grey.

"Caught" is refused by the gate with the package's settings; "flagged" also counts checks that
only warn.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.data.preprocess import prepare_image
from cxr_triage.errors import InvalidImageError
from cxr_triage.inference.predictor import Predictor
from cxr_triage.inference.qc import QcVerdict

__all__ = [
    "QcRow",
    "QcSet",
    "gate_table",
    "measure_gate",
    "nih_sets",
    "non_chest_images",
    "non_chest_set",
    "rows_markdown",
    "synthetic_sets",
]

log = logging.getLogger(__name__)

_NON_CHEST_DICOM = (
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "emri_small.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
)
_SAMPLE_IMAGES = (
    "grace_hopper.jpg",
    "Minduka_Present_Blue_Pack.png",
    "logo2.png",
    "s1045.ima.gz",
    "jacksboro_fault_dem.npz",
    "topobathy.npz",
)


@dataclass(frozen=True)
class QcSet:
    """Prepared images with their metadata, and whether the gate should pass them."""

    name: str
    images: np.ndarray  # uint8 (N, S, S)
    metadata: list[dict[str, Any]]
    groups: np.ndarray  # patient of each image (for the CI)
    expect_pass: bool
    note: str = ""


@dataclass(frozen=True)
class QcRow:
    """One row of the table: how many of a set passed, were caught, were flagged."""

    name: str
    n: int
    expect_pass: bool
    passed: float
    caught: float
    flagged: float
    ci_low: float  # of the share that matters: passed if expect_pass, else caught
    ci_high: float
    failed_checks: dict[str, int]
    note: str

    @property
    def share(self) -> float:
        return self.passed if self.expect_pass else self.caught

    def to_dict(self) -> dict[str, Any]:
        return {
            "set": self.name,
            "n": self.n,
            "expect": "pass" if self.expect_pass else "catch",
            "passed": self.passed,
            "caught": self.caught,
            "flagged": self.flagged,
            "share": self.share,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "failed_checks": self.failed_checks,
            "note": self.note,
        }


def _rotated(images: np.ndarray) -> np.ndarray:
    half = len(images) // 2
    return np.concatenate(
        [np.rot90(images[:half], 1, axes=(1, 2)), np.rot90(images[half:], 3, axes=(1, 2))]
    )


def _transformed(base: QcSet, prefix: str) -> list[QcSet]:
    return [
        QcSet(f"{prefix} inverted", 255 - base.images, base.metadata, base.groups, False),
        QcSet(
            f"{prefix} rotated 90 degrees",
            np.ascontiguousarray(_rotated(base.images)),
            base.metadata,
            base.groups,
            False,
        ),
    ]


def synthetic_sets(
    name: str, images: np.ndarray, metadata: list[dict[str, Any]], groups: np.ndarray
) -> list[QcSet]:
    """The pipeline's test images (should pass) and their inverted and rotated copies."""
    base = QcSet(name, np.asarray(images), metadata, np.asarray(groups), True)
    return [base, *_transformed(base, name)]


def nih_sets(nih_dir: Path, image_size: int, predictor: Predictor) -> list[QcSet]:
    """Adults (and their transforms) and children of ``nih_dir`` (the shared NIH subset)."""
    import pandas as pd

    labels = pd.read_csv(nih_dir / "labels.csv")
    images, metadata, groups, ages = [], [], [], []
    for row in labels.itertuples():
        try:
            prepared = predictor.prepare(nih_dir / "images" / row.image)
        except InvalidImageError as exc:
            log.warning("NIH image %s unreadable: %s", row.image, exc)
            continue
        images.append(prepared.pixels)
        metadata.append({**prepared.metadata, "view_position": row.view})
        groups.append(str(row.patient_id))
        ages.append(float(row.age))
    pixels, age = np.stack(images), np.asarray(ages)
    patient = np.asarray(groups)
    adult, child = np.flatnonzero(age >= 18), np.flatnonzero((age >= 3) & (age < 18))

    def subset(rows: np.ndarray, name: str, expect: bool, with_age: bool, note: str) -> QcSet:
        meta = [{**metadata[i], "age": ages[i]} if with_age else dict(metadata[i]) for i in rows]
        return QcSet(name, pixels[rows], meta, patient[rows], expect, note)

    adults = subset(adult, "NIH adults (real, frontal)", True, False, "PNG: no header")
    return [
        adults,
        *_transformed(adults, "NIH adults"),
        subset(child, "NIH children 3-17, pixels only", False, False, "PNG: age unknown"),
        subset(
            child,
            "NIH children 3-17, with PatientAge",
            False,
            True,
            "the age a DICOM header would carry",
        ),
    ]


def _grey(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=-1)
    low, high = np.percentile(a, [0.5, 99.5])
    return np.clip((a - low) / max(high - low, 1e-9), 0, 1).astype(np.float32)


def non_chest_images(dicom_dir: Path | None) -> list[tuple[str, np.ndarray]]:
    """``(name, grey float image)`` of non-chest inputs: the DICOM corpus' other body parts
    and modalities (each frame of a multi-frame file) and matplotlib's sample images."""
    import matplotlib
    import pydicom

    out: list[tuple[str, np.ndarray]] = []
    if dicom_dir is not None:
        for name in _NON_CHEST_DICOM:
            path = dicom_dir / name
            if not path.is_file():
                continue
            try:
                ds = pydicom.dcmread(path)
                pixels = ds.pixel_array
            except Exception as exc:  # noqa: BLE001 - a benchmark input we cannot decode is skipped
                log.warning("%s not decodable here (%s): left out", name, exc)
                continue
            if pixels.ndim == 3 and pixels.shape[-1] != 3:
                out += [(f"{name} frame {i}", _grey(f)) for i, f in enumerate(pixels)]
            else:
                out.append((name, _grey(pixels)))
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    for name in _SAMPLE_IMAGES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".npz"):
            with np.load(path) as z:
                arrays = [z[k] for k in z.files if z[k].ndim == 2]
            if arrays:
                out.append((name, _grey(arrays[0])))
        elif name.endswith(".ima.gz"):
            raw = np.frombuffer(gzip.open(path).read(), dtype="<u2")
            out.append((name, _grey(raw[-256 * 256 :].reshape(256, 256))))
        else:
            from PIL import Image

            out.append((name, _grey(np.asarray(Image.open(path).convert("L")))))
    return out


def non_chest_set(images: Sequence[tuple[str, np.ndarray]], image_size: int) -> QcSet:
    """The non-chest images as one set (each image its own group)."""
    pixels = np.stack([prepare_image(image, image_size) for _, image in images])
    metadata = [{"orig_rows": image.shape[0], "orig_cols": image.shape[1]} for _, image in images]
    names = sorted({name.split(" frame")[0] for name, _ in images})
    return QcSet(
        "non-chest (other body parts, photographs)",
        pixels,
        metadata,
        np.asarray([name for name, _ in images]),
        False,
        ", ".join(names),
    )


def measure_gate(
    predictor: Predictor,
    sets: Sequence[QcSet],
    *,
    ci: Callable[[np.ndarray, np.ndarray], tuple[float, float]],
) -> list[QcRow]:
    """The gate's verdict on every image of every set, summarised per set.

    Args:
        predictor: the package (its quality gate).
        sets: the input sets.
        ci: ``(values 0/1, groups) -> (low, high)``: the CI of a share.
    """
    rows = []
    for qc_set in sets:
        if len(qc_set.images) == 0:
            continue
        verdicts: list[QcVerdict] = predictor.quality_gate.check_many(
            qc_set.images, qc_set.metadata
        )
        passed = np.array([v.passed for v in verdicts], dtype=float)
        flagged = np.array([v.status != "pass" for v in verdicts], dtype=float)
        failed: dict[str, int] = {}
        for verdict in verdicts:
            for check in verdict.checks:
                if not check.passed and check.action != "off":
                    failed[check.name] = failed.get(check.name, 0) + 1
        share = passed if qc_set.expect_pass else 1 - passed
        low, high = ci(share, qc_set.groups)
        rows.append(
            QcRow(
                qc_set.name,
                len(verdicts),
                qc_set.expect_pass,
                float(passed.mean()),
                float(1 - passed.mean()),
                float(flagged.mean()),
                low,
                high,
                dict(sorted(failed.items())),
                qc_set.note,
            )
        )
    return rows


def rows_markdown(rows: Sequence[QcRow | Mapping[str, Any]]) -> str:
    """The table of the model card."""
    lines = [
        "| input | n | should be | passed | caught (refused) | flagged (refused or warned) "
        "| 95% CI of the share that matters | failed checks |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        r = row.to_dict() if isinstance(row, QcRow) else dict(row)
        checks = ", ".join(f"{k} {v}" for k, v in r["failed_checks"].items()) or "-"
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(
            f"| {r['set']}{note} | {r['n']} | {'passed' if r['expect'] == 'pass' else 'caught'} "
            f"| {100 * r['passed']:.1f}% | {100 * r['caught']:.1f}% | {100 * r['flagged']:.1f}% "
            f"| {100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}% | {checks} |"
        )
    return "\n".join(lines)


def gate_table(
    predictor: Predictor,
    test: QcSet,
    benchmark_dir: Path | None,
    *,
    ci: Callable[[np.ndarray, np.ndarray], tuple[float, float]],
) -> list[QcRow]:
    """The model card's pass/catch table: the pipeline's test images and their transforms,
    and, when ``benchmark_dir`` exists, the real NIH images and the non-chest inputs.

    Args:
        predictor: the package (its quality gate and preprocessing).
        test: the pipeline's test images (should pass).
        benchmark_dir: the folder holding ``nih-cxr/`` and ``dicom/`` (None or absent: only
            the test rows).
        ci: ``(values 0/1, groups) -> (low, high)``.
    """
    sets = synthetic_sets(test.name, test.images, test.metadata, test.groups)
    if benchmark_dir is not None and Path(benchmark_dir).is_dir():
        nih = Path(benchmark_dir) / "nih-cxr"
        if (nih / "labels.csv").is_file():
            sets += nih_sets(nih, predictor.image_size, predictor)
        dicom = Path(benchmark_dir) / "dicom"
        others = non_chest_images(dicom if dicom.is_dir() else None)
        if others:
            full = non_chest_set(others, predictor.image_size)
            content_only = QcSet(
                "non-chest, content checks only",
                full.images,
                [{} for _ in full.metadata],
                full.groups,
                False,
                "no header and no size: what the pixels alone catch",
            )
            sets += [full, content_only]
    else:
        log.warning(
            "QC benchmark folder %s absent: the table has the test rows only", benchmark_dir
        )
    return measure_gate(predictor, sets, ci=ci)


_GATE_COLUMNS = ("view_position", "age", "orig_rows", "orig_cols", "burned_in_annotation")


def gate_metadata(manifest: Any) -> list[dict[str, Any]]:
    """The header values the gate reads, per manifest row (a pandas frame of the ingest
    manifest; columns it lacks are unknown, and their checks pass)."""
    columns = [c for c in _GATE_COLUMNS if c in manifest.columns]
    rows = manifest[columns].to_dict(orient="records")
    return [
        {"age" if k == "age" else k: (None if _missing(v) else v) for k, v in row.items()}
        for row in rows
    ]


def _missing(value: Any) -> bool:
    try:
        return bool(np.isnan(value))
    except TypeError:
        return value is None or value == ""


def _slug(name: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in name.lower()).split()
    return "_".join(w for w in words if w not in ("real", "frontal", "degrees"))[:48]


def qc_summary(rows: Sequence[QcRow]) -> dict[str, float]:
    """``metrics.json`` keys of the table: ``qc_<set>_passed`` for sets that should pass,
    ``qc_<set>_caught`` for sets that should be caught, each with its CI and ``_n``."""
    out: dict[str, float] = {}
    for row in rows:
        key = f"qc_{_slug(row.name)}_{'passed' if row.expect_pass else 'caught'}"
        out.update(
            {
                key: row.share,
                f"{key}_ci_low": row.ci_low,
                f"{key}_ci_high": row.ci_high,
                f"{key}_n": row.n,
            }
        )
    return out
