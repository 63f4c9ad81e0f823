"""Ingest end to end on real files: every source kind, rejects, PHI, and kill-safety."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from cxr_triage.data.deid import SALT_ENV, SYNTHETIC_SALT, Pseudonymiser
from cxr_triage.data.ingest import MANIFEST_COLUMNS, ingest
from cxr_triage.data.sources import discover
from helpers.pipeline import REPO

pytestmark = pytest.mark.integration

SALT = "integration-test-salt-0123456789"
PHI_KEYWORDS = (
    "PatientName",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "OperatorsName",
    "StudyID",
    "PatientID",
    "StudyInstanceUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
)


def _phi_strings(source: Path) -> set[str]:
    """Every identifying value in the source: header PHI, name parts, raw patient IDs."""
    found: set[str] = set()
    for path in source.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in PHI_KEYWORDS:
            value = str(ds.get(keyword, "") or "")
            if value:
                found.add(value)
                found.update(part for part in value.split("^") if len(part) >= 4)
    for table in source.rglob("labels.csv"):
        found.update(pd.read_csv(table, dtype=str)["Patient ID"])
    return {s for s in found if len(s) >= 4}


def test_ingest_synthetic_source_builds_manifest_and_pixels(synthetic_source, tmp_path):
    out = tmp_path / "ingest"
    summary = ingest(
        discover("synthetic", synthetic_source),
        out,
        image_size=64,
        salt=SYNTHETIC_SALT,
        workers=2,
        progress=False,
    )
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    pixels = np.load(out / "pixels.npy", mmap_mode="r")
    labels = pd.concat([pd.read_csv(t) for t in sorted(synthetic_source.glob("*/labels.csv"))])
    assert summary.n_ingested == len(labels) == len(manifest) == pixels.shape[0]
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert pixels.shape[1:] == (64, 64) and pixels.dtype == np.uint8
    assert manifest["row"].tolist() == list(range(len(manifest)))
    assert set(manifest["site"]) == {"hospital_a", "hospital_b"}
    expected_abnormal = int((labels["Finding Labels"] != "No Finding").sum())
    assert int(manifest["label"].eq("abnormal").sum()) == expected_abnormal
    # Patients are pseudonymised consistently: one raw ID -> one pseudonym.
    pseudo = Pseudonymiser(SYNTHETIC_SALT)
    assert set(manifest["patient_id"]) == {pseudo.patient(p) for p in labels["Patient ID"]}
    assert set(manifest["modality"]) <= {"CR", "DX"}
    assert manifest["manufacturer"].ne("").all()
    counts = json.loads((out / "counts.json").read_text())
    assert counts["n_ingested"] == len(manifest) and counts["n_rejected"] == 0
    # Row i of pixels.npy is manifest row i: images differ from each other.
    assert len({pixels[i].tobytes() for i in range(len(manifest))}) == len(manifest)


def test_ingest_outputs_and_logs_contain_no_phi(synthetic_source, tmp_path):
    phi = _phi_strings(synthetic_source)
    assert len(phi) > 20, "the synthetic source must carry fake PHI for this test to mean anything"
    out = tmp_path / "ingest"
    env = {**os.environ, SALT_ENV: SALT, "CXR_TRIAGE_LOG_LEVEL": "DEBUG"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr_triage.cli",
            "ingest",
            str(synthetic_source),
            "--out",
            str(out),
            "--source",
            "synthetic",
            "--image-size",
            "32",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=tmp_path,
    )
    blobs = {"stdout": proc.stdout.encode(), "stderr": proc.stderr.encode()}
    blobs.update({str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert len(blobs) >= 6
    for name, blob in blobs.items():
        leaked = [s for s in phi if s.encode() in blob]
        assert not leaked, f"PHI {leaked[:3]} found in {name}"


def _png(path: Path, mode: str = "L") -> None:
    # Distinct pixels per file name: an image is identified by its content.
    rng = np.random.default_rng(list(path.name.encode()))
    arr = rng.integers(0, 255, (48, 40), dtype=np.uint8)
    if mode == "RGB":
        Image.fromarray(np.dstack([arr, 255 - arr, arr // 2])).save(path)
    else:
        Image.fromarray(arr).save(path)


def test_ingest_folder_source_reports_every_problem(tmp_path, synthetic_source):
    src = tmp_path / "src"
    (src / "imgs").mkdir(parents=True)
    for name in ("a.png", "b.png", "unlisted.png"):
        _png(src / "imgs" / name)
    _png(src / "imgs" / "colour.png", mode="RGB")
    shutil.copy(src / "imgs" / "a.png", src / "imgs" / "a_copy.png")  # same image, other name
    dicom = next(synthetic_source.glob("hospital_a/images/*.dcm"))
    shutil.copy(dicom, src / "imgs" / "c.dcm")
    ct = pydicom.dcmread(dicom)
    ct.Modality = "CT"
    ct.save_as(src / "imgs" / "ct.dcm")
    (src / "notes.txt").write_text("not an image")
    pd.DataFrame(
        {
            "image": [
                "imgs/a.png",
                "b.png",
                "c.dcm",
                "colour.png",
                "ct.dcm",
                "gone.png",
                "a_copy.png",
            ],
            "label": ["normal", "abnormal", "abnormal", "normal", "normal", "normal", "normal"],
            "patient_id": ["p1", "p1", "p2", "p3", "p4", "p5", "p6"],
        }
    ).to_csv(src / "labels.csv", index=False)
    out = tmp_path / "out"
    summary = ingest(
        discover("folder", src, site="clinic"),
        out,
        image_size=32,
        salt=SALT,
        workers=1,
        progress=False,
    )
    rejects = pd.read_csv(out / "rejects.csv").set_index("source_path")["reason"].to_dict()
    assert rejects == {
        "gone.png": "file_missing",
        "imgs/unlisted.png": "no_label_row",
        "imgs/colour.png": "unsupported_image_type",
        "imgs/ct.dcm": "wrong_modality",
        "imgs/a_copy.png": "duplicate",
    }
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert summary.n_ingested == 3 and len(manifest) == 3
    assert manifest["label"].tolist() == ["normal", "abnormal", "abnormal"]
    assert manifest["format"].tolist() == ["png", "png", "dicom"]
    assert manifest["patient_id"].iloc[0] == manifest["patient_id"].iloc[1]
    assert set(manifest["site"]) == {"clinic"}
    counts = json.loads((out / "counts.json").read_text())
    assert counts["ignored_non_image_files"] == 1
    assert counts["n_rejected"] == 5


def test_ingest_dicom_tree_without_labels(tmp_path, synthetic_source):
    src = tmp_path / "tree" / "study1"
    src.mkdir(parents=True)
    files = sorted(synthetic_source.glob("hospital_b/images/*.dcm"))[:3]
    for i, f in enumerate(files):
        shutil.copy(f, src / f"IM{i:04d}")  # DICOM files often have no extension
    shutil.copy(files[0], src / "IM_dup")  # same SOP Instance UID twice
    out = tmp_path / "out"
    ingest(
        discover("dicom", tmp_path / "tree"),
        out,
        image_size=32,
        salt=SALT,
        workers=1,
        progress=False,
    )
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert len(manifest) == 3 and manifest["label"].eq("").all()
    assert manifest["sex"].isin(["M", "F"]).all() and manifest["age"].gt(0).all()
    rejects = pd.read_csv(out / "rejects.csv")
    assert rejects["reason"].tolist() == ["duplicate"]


@pytest.mark.shared_data
def test_ingest_chestxray14_real_metadata_and_official_lists(shared_data, tmp_path):
    nih = shared_data / "nih-cxr"
    labels = pd.read_csv(nih / "labels.csv", dtype=str, keep_default_na=False)
    subset = pd.concat(
        [
            labels[labels["nih_official_split"] == "test"].head(8),
            labels[labels["nih_official_split"] == "train_val"].head(24),
        ]
    )
    src = tmp_path / "nih"
    (src / "images_001" / "images").mkdir(parents=True)
    for name in subset["image"]:
        os.symlink(nih / "images" / name, src / "images_001" / "images" / name)
    os.symlink(nih / "Data_Entry_2017_v2020.csv.gz", src / "Data_Entry_2017_v2020.csv.gz")
    # The official lists name images by NIH Image Index (files here carry a "nih_" prefix).
    index = subset["image"].str.removeprefix("nih_")
    (src / "test_list.txt").write_text("\n".join(index[subset["nih_official_split"] == "test"]))
    (src / "train_val_list.txt").write_text(
        "\n".join(index[subset["nih_official_split"] == "train_val"])
    )
    out = tmp_path / "out"
    summary = ingest(
        discover("chestxray14", src), out, image_size=64, salt=SALT, workers=2, progress=False
    )
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert summary.n_ingested == 32
    assert manifest["official_split"].value_counts().to_dict() == {"train_val": 24, "test": 8}
    # Labels come from the real NIH table and agree with the curated labels.csv.
    expected = subset.set_index(index)["label"].value_counts().to_dict()
    assert manifest["label"].value_counts().to_dict() == expected
    assert manifest["view_position"].isin(["PA", "AP"]).all()
    rejects = pd.read_csv(out / "rejects.csv")
    assert rejects["reason"].tolist() == ["rows_without_file"]


def test_ingest_killed_midway_leaves_previous_output_intact(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        Image.fromarray(rng.integers(0, 255, (600, 600), dtype=np.uint8)).save(src / f"{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_text("previous\n")
    env = {**os.environ, SALT_ENV: SALT}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxr_triage.cli",
            "ingest",
            str(src),
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (out / "manifest.csv").read_text() == "previous\n"
    assert list(out.iterdir()) == [out / "manifest.csv"]
    # The next run removes the killed run's temporary folder and completes.
    ingest(discover("folder", src), out, image_size=16, salt=SALT, workers=2, progress=False)
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert len(pd.read_csv(out / "manifest.csv")) == 400


def test_cli_ingest_real_data_without_salt_fails_with_instructions(tmp_path):
    (tmp_path / "src").mkdir()
    _png(tmp_path / "src" / "a.png")
    env = {k: v for k, v in os.environ.items() if k != SALT_ENV}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr_triage.cli",
            "ingest",
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert "CXR_TRIAGE_SALT" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_one_png_gets_one_image_id_from_the_ingest_stage_and_the_ingestion_flow(tmp_path):
    """The ``ingest`` stage and the ingestion flow (``data/raw``) key an image the same way.

    Both go through ``read_item``; before it, the stage keyed a PNG by its path and the flow by
    its content, so the same image had two ids (and could be in two data versions twice).
    """
    from cxr_triage.data.ingest import ingest_source
    from cxr_triage.orchestration.rawdata import add_batch_to_raw

    batch = tmp_path / "batch"
    (batch / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(batch / "sub/a.png")
    pd.DataFrame({"image": ["sub/a.png"], "label": ["abnormal"]}).to_csv(
        batch / "labels.csv", index=False
    )
    os.environ[SALT_ENV] = SALT
    try:
        ingest_source("folder", batch, tmp_path / "ingest", image_size=32, workers=1)
    finally:
        del os.environ[SALT_ENV]
    stage_id = pd.read_csv(tmp_path / "ingest/manifest.csv", dtype=str)["image_id"].item()
    result = add_batch_to_raw(batch, tmp_path / "raw", salt=SALT)
    flow_image = result.accepted[0]["image"]
    assert flow_image == f"images/{stage_id}.png"
