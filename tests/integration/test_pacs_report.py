"""The result SR (and secondary capture) pass dicom3tools' dciodvfy and dcmtk's dsrdump.

Both tools can exit 0 while printing errors, so their output is read (STACK-wave2.md §2)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, generate_uid

from cxr_triage.io.images import read_image
from cxr_triage.pacs.report import (
    ImageResult,
    ModelInfo,
    build_secondary_capture,
    build_sr,
    read_sr_result,
    study_result,
)

pytestmark = pytest.mark.integration

MODEL = ModelInfo("cxr-triage:0123456789abcdef", "logreg", 0.4479, 0.95, 0.43)
SIIM = "txv_siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def _tools() -> None:
    for tool in ("dciodvfy", "dsrdump"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make system-deps installs it)")


def _validate(path: Path, *, sr: bool = True) -> str:
    """dciodvfy's (and for an SR dsrdump's) messages; fails on any error line."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = proc.stdout + proc.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors and proc.returncode == 0, report
    if sr:
        proc = subprocess.run(
            ["dsrdump", "-v", "+Pc", str(path)], capture_output=True, text=True, timeout=60
        )
        bad = [line for line in proc.stderr.splitlines() if line[:2] in ("E:", "F:", "W:")]
        assert proc.returncode == 0 and not bad, proc.stdout + proc.stderr
        report += proc.stdout
    return report


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", SIIM])
def test_sr_of_real_chest_films_is_valid(shared_data, name, tmp_path) -> None:
    _tools()
    source = shared_data / "dicom" / name
    header = pydicom.dcmread(source, stop_before_pixels=True)
    result = study_result(
        [ImageResult(header, 0.61234567)],
        rule="max",
        threshold=0.4479,
        labels=["normal", "abnormal"],
    )
    series = str(generate_uid())
    sr = build_sr(result, MODEL, sr_uid=str(generate_uid()), series_uid=series, version=1,
                  device_name="CXRTRIAGE")  # fmt: skip
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    report = _validate(path)
    assert '(263654008,SCT,"Abnormal")' in report
    assert 'Probability of abnormal chest radiograph")="0.612346"' in report
    assert "Not for clinical use" in report
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    assert sr.PatientID == header.PatientID
    assert read_sr_result(sr)["referenced"] == [header.SOPInstanceUID]

    # a superseding version: same series, next instance number, the first one as predecessor
    previous = Dataset()
    previous.SOPClassUID, previous.SOPInstanceUID = ComprehensiveSRStorage, sr.SOPInstanceUID
    previous.StudyInstanceUID, previous.SeriesInstanceUID = sr.StudyInstanceUID, series
    second = build_sr(result, MODEL, sr_uid=str(generate_uid()), series_uid=series, version=2,
                      device_name="CXRTRIAGE", previous=previous)  # fmt: skip
    second.save_as(path, enforce_file_format=True)
    assert "Predecessor Docs    : 1" in _validate(path)

    capture = build_secondary_capture(
        header,
        read_image(source).pixels,
        result,
        MODEL,
        sop_uid=str(generate_uid()),
        series_uid=str(generate_uid()),
        version=1,
    )
    capture.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    _validate(tmp_path / "sc.dcm", sr=False)
    assert capture.BurnedInAnnotation == "YES"


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("PatientSex", "U"), ("PatientSex", "MALE"), ("PatientBirthDate", "0000"),
     ("StudyDate", "2023-01-01"), ("StudyTime", "25")],
)  # fmt: skip
def test_sr_of_a_header_with_an_invalid_copied_value_is_valid(
    shared_data, keyword, value, tmp_path, caplog
) -> None:
    """Modalities write values the standard does not allow; highdicom refuses to copy them,
    which stopped the listener on that study. They are sent empty, the rest is copied."""
    _tools()
    header = pydicom.dcmread(shared_data / "dicom" / "RG1_UNCR.dcm", stop_before_pixels=True)
    setattr(header, keyword, value)  # pydicom warns with the value here, as a reader would
    caplog.clear()
    result = study_result(
        [ImageResult(header, 0.7)], rule="max", threshold=0.4479, labels=["normal", "abnormal"]
    )
    sr = build_sr(result, MODEL, sr_uid=str(generate_uid()), series_uid=str(generate_uid()),
                  version=1, device_name="CXRTRIAGE")  # fmt: skip
    assert sr.get(keyword) in (None, "")
    assert sr.PatientID == header.PatientID and sr.PatientName == header.PatientName
    assert f"{keyword} of a source image is not a valid DICOM value" in caplog.text
    assert value not in caplog.text  # the value itself may be PHI
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    _validate(tmp_path / "sr.dcm")
