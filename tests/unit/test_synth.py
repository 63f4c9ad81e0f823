"""Tests of the synthetic chest radiograph generator (small images, few files: fast)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pydicom import dcmread
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ComputedRadiographyImageStorage

from cxr_triage.config import SynthParams, load_params
from cxr_triage.data.synth import (
    LABEL_COLUMNS,
    SITE_PRESETS,
    SiteProfile,
    SynthConfig,
    generate_dataset,
    render,
    site_profile,
)
from cxr_triage.data.synth.cohort import (
    CHRONIC_FINDINGS,
    FINDING_WEIGHTS,
    LESION_ROWS,
    plan_images,
)
from cxr_triage.data.synth.lesions import DRAWN_BY, NOMINAL_CONTRAST
from cxr_triage.errors import ConfigError
from cxr_triage.vocabulary import FINDINGS
from helpers.pipeline import REPO, SMALL_SYNTH

CHESTXRAY14_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Site"
)
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyID",
    "OperatorsName",
)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _display(path: Path) -> np.ndarray:
    """Decode like ingest does: modality LUT, window, then MONOCHROME1 inversion; in [0, 1]."""
    ds = dcmread(path)
    arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0).astype(np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = arr.max() - arr
    lo, hi = np.percentile(arr, [0.5, 99.5])
    return np.clip((arr - lo) / (hi - lo + 1e-6), 0, 1)


def test_generate_dataset_is_byte_identical_for_same_arguments(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "one", 12, "hospital_a", seed=7, config=SMALL_SYNTH)
    second = generate_dataset(
        tmp_path / "two", 12, "hospital_a", seed=7, config=SMALL_SYNTH, workers=2
    )
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) == 14  # 12 images, labels.csv, lesion_boxes.csv
    assert one == two
    pd.testing.assert_frame_equal(first, second)


def test_generate_dataset_differs_for_another_seed(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "one", 4, "hospital_a", seed=1, config=SMALL_SYNTH)
    generate_dataset(tmp_path / "two", 4, "hospital_a", seed=2, config=SMALL_SYNTH)
    assert _files(tmp_path / "one")["labels.csv"] != _files(tmp_path / "two")["labels.csv"]


def test_generate_dataset_writes_chestxray14_header(hospital_c: tuple[Path, pd.DataFrame]) -> None:
    out, table = hospital_c
    with (out / "labels.csv").open() as handle:
        header = handle.readline().rstrip("\n")
        rows = list(csv.reader(handle))
    assert header == CHESTXRAY14_HEADER
    assert all(len(row) == len(LABEL_COLUMNS) for row in rows)
    assert list(table.columns) == list(LABEL_COLUMNS)
    pd.testing.assert_frame_equal(pd.read_csv(out / "labels.csv"), table)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(table["Image Index"])


def test_generate_dataset_labels_are_consistent(hospital_c: tuple[Path, pd.DataFrame]) -> None:
    _, table = hospital_c
    for labels in table["Finding Labels"]:
        parts = labels.split("|")
        assert parts == ["No Finding"] or (
            set(parts) <= set(FINDINGS) and "No Finding" not in parts
        )
        assert parts == sorted(parts)
    assert set(table["Patient Gender"]) <= {"M", "F"}
    assert set(table["View Position"]) <= {"PA", "AP"}
    assert table["Image Index"].str.match(r"^hospital_c_\d{5}_\d{3}\.dcm$").all()
    assert table["Patient ID"].str.match(r"^SYN-HOSPITAL_C-\d{5}$").all()
    # Follow-ups: several images per patient, numbered from 0, sharing sex.
    per_patient = table.groupby("Patient ID")
    assert per_patient.size().max() > 1
    assert (per_patient["Follow-up #"].min() == 0).all()
    assert (per_patient["Patient Gender"].nunique() == 1).all()


def test_generate_dataset_writes_dicom_headers_and_fake_phi(
    hospital_c: tuple[Path, pd.DataFrame],
) -> None:
    out, table = hospital_c
    row = table.iloc[0]
    ds = dcmread(out / "images" / row["Image Index"])
    site = SITE_PRESETS["hospital_c"]
    assert ds.Modality == "CR"
    assert ds.SOPClassUID == ComputedRadiographyImageStorage
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 10, 9)
    assert ds.BodyPartExamined == "CHEST"
    assert ds.ViewPosition == row["View Position"]
    assert ds.PatientSex == row["Patient Gender"]
    assert ds.PatientAge == f"{row['Patient Age']:03d}Y"
    assert ds.PatientID == row["Patient ID"]
    assert ds.Manufacturer == site.manufacturer
    assert ds.StationName == "hospital_c"
    assert (ds.Rows, ds.Columns) == (row["Height]"], row["OriginalImage[Width"])
    assert float(ds.PixelSpacing[0]) == pytest.approx(row["OriginalImagePixelSpacing[x"])
    for keyword in PHI_KEYWORDS:
        assert str(ds.data_element(keyword).value), keyword
    assert str(ds.PatientName).endswith("^Synthetic")
    assert ds.pixel_array.dtype == np.uint16
    assert int(ds.pixel_array.max()) <= 2**10 - 1
    assert float(ds.WindowWidth) > 0
    # No PHI in file names.
    assert str(ds.PatientName).split("^")[0] not in row["Image Index"]


def test_generate_dataset_monochrome1_stores_lungs_high(
    hospital_c: tuple[Path, pd.DataFrame],
) -> None:
    out, table = hospital_c
    lungs, abdomen = [], []
    for name in table["Image Index"][:8]:
        stored = dcmread(out / "images" / name).pixel_array.astype(float)
        rows, cols = stored.shape
        lungs.append(stored[int(0.35 * rows), int(0.27 * cols)])
        abdomen.append(stored[int(0.92 * rows), int(0.5 * cols)])
    assert np.mean(lungs) > np.mean(abdomen) + 100  # air is high in MONOCHROME1


def test_generate_dataset_monochrome2_stores_lungs_low(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", 4, "hospital_a", seed=0, config=SMALL_SYNTH)
    for path in sorted((tmp_path / "a" / "images").iterdir()):
        ds = dcmread(path)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        stored = ds.pixel_array.astype(float)
        assert stored[22, 17] < stored[59, 32]


@pytest.mark.parametrize("site", ["hospital_a", "hospital_b", "hospital_c", "new_hospital"])
def test_plan_prevalence_follows_profile(site: str) -> None:
    # The plan decides labels and views before any pixel is rendered, so 2000 images are cheap.
    profile = SITE_PRESETS[site]
    table = pd.DataFrame(
        {"abnormal": bool(spec.labels), "view": spec.view, "age": spec.age}
        for spec in plan_images(2000, profile, 5, SynthConfig())
    )
    assert table["abnormal"].mean() == pytest.approx(profile.abnormal_prevalence, abs=0.07)
    ap_rate = table.groupby("abnormal")["view"].apply(lambda v: (v == "AP").mean())
    assert ap_rate[True] > 1.3 * ap_rate[False]  # AP more often among abnormal, as in real data
    by_age = table.groupby(table["age"] >= 60)["abnormal"].mean()
    assert by_age[True] > by_age[False]  # older patients are more often abnormal


def test_generate_dataset_prevalence_override(tmp_path: Path) -> None:
    config = SynthConfig(image_size=32, prevalence=1.0, label_noise=0.0)
    table = generate_dataset(tmp_path / "all", 10, "hospital_b", seed=0, config=config)
    assert (table["Finding Labels"] != "No Finding").all()


def test_generate_dataset_new_hospital_is_shifted(tmp_path: Path) -> None:
    stats = {}
    for site in ("hospital_a", "new_hospital"):
        generate_dataset(tmp_path / site, 6, site, seed=0, config=SynthConfig(image_size=128))
        images = [_display(p) for p in sorted((tmp_path / site / "images").iterdir())]
        # Noise level: pixel-to-pixel differences dominate a high-pass of the rendered image.
        stats[site] = (
            np.mean([im.mean() for im in images]),
            np.mean([np.abs(np.diff(im, axis=1)).mean() for im in images]),
        )
    assert abs(stats["new_hospital"][0] - stats["hospital_a"][0]) > 0.05
    assert stats["new_hospital"][1] > 1.3 * stats["hospital_a"][1]
    a, new = SITE_PRESETS["hospital_a"], SITE_PRESETS["new_hospital"]
    assert new.manufacturer != a.manufacturer
    assert (new.rows, new.bits_stored) != (a.rows, a.bits_stored)


@pytest.mark.parametrize(
    "table",
    [FINDING_WEIGHTS, LESION_ROWS, NOMINAL_CONTRAST, DRAWN_BY],
    ids=["FINDING_WEIGHTS", "LESION_ROWS", "NOMINAL_CONTRAST", "DRAWN_BY"],
)
def test_per_finding_tables_cover_the_vocabulary(table: dict[str, object]) -> None:
    assert sorted(table) == sorted(FINDINGS)
    assert CHRONIC_FINDINGS <= set(FINDINGS)


def test_site_profile_unknown_name_is_deterministic() -> None:
    profile = site_profile("st_elsewhere")
    assert profile == site_profile("st_elsewhere")
    assert profile.name == "st_elsewhere"
    assert profile != site_profile("st_somewhere")
    assert isinstance(profile, SiteProfile)
    assert site_profile("hospital_a") is SITE_PRESETS["hospital_a"]


def test_site_profile_presets_differ() -> None:
    assert {"hospital_a", "hospital_b", "hospital_c", "new_hospital"} <= set(SITE_PRESETS)
    acquisitions = {
        (p.manufacturer, p.photometric, p.bits_stored, p.rows, p.contrast)
        for p in SITE_PRESETS.values()
    }
    assert len(acquisitions) == len(SITE_PRESETS)


def test_site_profile_bad_name_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="site name"):
        site_profile("../etc")


@pytest.mark.parametrize("n", [0, -3])
def test_generate_dataset_nonpositive_n_raises_config_error(tmp_path: Path, n: int) -> None:
    with pytest.raises(ConfigError, match="n must be a positive number"):
        generate_dataset(tmp_path / "out", n, "hospital_a", seed=0)
    assert not (tmp_path / "out").exists()


def test_synth_config_bad_range_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="lesion_contrast"):
        SynthConfig(lesion_contrast=(1.0, 0.5))
    with pytest.raises(ConfigError, match="subtle_fraction"):
        SynthConfig(subtle_fraction=1.5)


def test_synth_config_defaults_are_the_pipeline_default() -> None:
    # One default dataset: params.yaml's synth knobs, SynthParams' and SynthConfig's agree, so the
    # CLI and the promotion gate's frozen set draw from the same task as the pipeline.
    params = load_params(REPO / "params.yaml")
    assert SynthConfig.from_params(params.synth) == SynthConfig()
    assert SynthConfig.from_params(SynthParams()) == SynthConfig()


def test_synth_config_from_params_reads_every_knob(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["synth"].update(lesion_contrast=[0.2, 0.4], label_noise=0.5, image_size=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    config = SynthConfig.from_params(load_params(tmp_path / "params.yaml").synth)
    assert (config.lesion_contrast, config.label_noise, config.image_size) == ((0.2, 0.4), 0.5, 64)
    data["synth"]["subtle_fraction"] = 2.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="subtle_fraction"):
        SynthConfig.from_params(load_params(tmp_path / "params.yaml").synth)


def test_generate_dataset_existing_out_dir_raises_config_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        generate_dataset(out, 2, "hospital_a", seed=0, config=SMALL_SYNTH)
    assert (out / "keep.txt").read_text() == "mine"
    generate_dataset(out, 2, "hospital_a", seed=0, config=SMALL_SYNTH, overwrite=True)
    assert not (out / "keep.txt").exists()


def test_generate_dataset_failed_run_leaves_no_out_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    draw = render._render

    def failing_render(*args: object, **kwargs: object) -> tuple:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker died")
        return draw(*args, **kwargs)

    monkeypatch.setattr(render, "_render", failing_render)
    with pytest.raises(RuntimeError, match="worker died"):
        generate_dataset(tmp_path / "out", 6, "hospital_a", seed=0, config=SMALL_SYNTH)
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor its temporary sibling


def test_generate_dataset_failed_worker_process_leaves_no_out_dir(tmp_path: Path) -> None:
    # Bypass validation so that only rendering (inside the worker processes) fails.
    bad = SynthConfig(image_size=64)
    object.__setattr__(bad, "pose_jitter", "not a number")
    with pytest.raises(TypeError):
        generate_dataset(tmp_path / "out", 8, "hospital_a", seed=0, config=bad, workers=2)
    assert list(tmp_path.iterdir()) == []
