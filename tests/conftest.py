"""Shared fixtures: the read-only ../shared/data folder and small synthetic CR/DX DICOMs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxr_triage.data.synth.dicom import image_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; skips the test where it is absent."""
    path = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"../shared/data is absent: expected the read-only real data at {path}")
    return path


def ramp_pixels(rows: int = 48, cols: int = 64, bits: int = 12) -> np.ndarray:
    """A deterministic image that covers the whole stored range 0 .. 2**bits - 1."""
    top = 2**bits - 1
    ramp = np.linspace(0, top, rows * cols).reshape(rows, cols)
    return np.rint(ramp).astype(np.uint16 if bits > 8 else np.uint8)


MakeDicom = Callable[..., Path]


@pytest.fixture
def make_dicom(tmp_path: Path) -> MakeDicom:
    """Factory writing a small CR/DX DICOM with the project's one writer (``image_dataset``).

    Call ``make_dicom(pixels=None, **overrides)``; it returns the path of the written file.
    Overrides (all optional):
        name: file name inside ``tmp_path``.
        modality: "DX" (default) or "CR" (sets the SOP class), or any other Modality value.
        photometric: PhotometricInterpretation (default "MONOCHROME2").
        bits_stored: BitsStored (default 12; BitsAllocated is 8 up to 8 bits, else 16).
        pixel_representation: 0 unsigned (default) or 1 signed.
        rescale_slope / rescale_intercept: written when not None (default 1 / 0).
        window_center / window_width: written when not None (default none).
        voi_lut_function: VOILUTFunction, e.g. "LINEAR_EXACT" or "SIGMOID".
        voi_lut: (first_mapped, lut_values) written as a one-item VOI LUT Sequence.
        body_part: BodyPartExamined (default "CHEST"; None leaves it out).
        frames: NumberOfFrames; the pixels are repeated once per frame.
        samples_per_pixel: 3 writes an interleaved RGB image of the grey pixels.
        transfer_syntax: a UID; compressed with ``ds.compress(...)`` after building.
        patient_id, patient_name, patient_birth_date, patient_age, patient_sex,
        accession_number, institution_name: PHI and demographics.
        drop: keywords deleted before saving (e.g. ``("PixelData",)``).
        truncate_pixel_data: bytes cut off the end of PixelData.
        extra: further ``{keyword: value}`` set on the dataset.
    """

    def _make(pixels: np.ndarray | None = None, **overrides: object) -> Path:
        opts: dict[str, object] = {
            "name": "image.dcm",
            "modality": "DX",
            "photometric": "MONOCHROME2",
            "bits_stored": 12,
            "pixel_representation": 0,
            "rescale_slope": 1,
            "rescale_intercept": 0,
            "window_center": None,
            "window_width": None,
            "voi_lut_function": None,
            "voi_lut": None,
            "body_part": "CHEST",
            "frames": 1,
            "samples_per_pixel": 1,
            "transfer_syntax": None,
            "patient_id": "SYN0001",
            "patient_name": "Test^Patient",
            "patient_birth_date": "19600101",
            "patient_age": "062Y",
            "patient_sex": "F",
            "accession_number": "ACC123",
            "institution_name": "Test Hospital",
            "drop": (),
            "truncate_pixel_data": 0,
            "extra": {},
        }
        unknown = set(overrides) - set(opts)
        if unknown:
            raise TypeError(f"make_dicom: unknown overrides {sorted(unknown)}")
        opts.update(overrides)
        bits = int(opts["bits_stored"])
        signed = int(opts["pixel_representation"]) == 1
        allocated = 8 if bits <= 8 else 16
        dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16}.get(
            (allocated, signed), np.int16
        )
        img = ramp_pixels(bits=bits) if pixels is None else pixels
        img = np.asarray(img).astype(dtype)
        samples = int(opts["samples_per_pixel"])
        if samples == 3:
            img = np.repeat(img[..., None], 3, axis=-1)
        if int(opts["frames"]) > 1:
            img = np.stack([img] * int(opts["frames"]))

        attributes: dict[str, object] = {
            "PatientName": opts["patient_name"],
            "PatientID": opts["patient_id"],
            "PatientBirthDate": opts["patient_birth_date"],
            "PatientAge": opts["patient_age"],
            "PatientSex": opts["patient_sex"],
            "AccessionNumber": opts["accession_number"],
            "InstitutionName": opts["institution_name"],
            "ViewPosition": "PA",
        }
        optional = {
            "BodyPartExamined": "body_part",
            "RescaleSlope": "rescale_slope",
            "RescaleIntercept": "rescale_intercept",
            "WindowCenter": "window_center",
            "WindowWidth": "window_width",
            "VOILUTFunction": "voi_lut_function",
        }
        attributes |= {kw: opts[key] for kw, key in optional.items() if opts[key] is not None}
        if opts["voi_lut"] is not None:
            first_mapped, values = opts["voi_lut"]
            values = np.asarray(values, dtype=np.uint16)
            item = Dataset()
            item.LUTDescriptor = [len(values), int(first_mapped), 16]
            item.LUTData = values.astype("<u2").tobytes()  # OW in the data dictionary
            attributes["VOILUTSequence"] = Sequence([item])
        attributes |= dict(opts["extra"])

        ds = image_dataset(
            img,
            modality=str(opts["modality"]),
            photometric=str(opts["photometric"]),
            bits_stored=bits,
            samples_per_pixel=samples,
            attributes=attributes,
        )
        if opts["transfer_syntax"] is not None:
            ds.compress(opts["transfer_syntax"])
        if opts["truncate_pixel_data"]:
            ds.PixelData = ds.PixelData[: -int(opts["truncate_pixel_data"])]
        for keyword in opts["drop"]:
            delattr(ds, keyword)
        path = tmp_path / str(opts["name"])
        ds.save_as(path, enforce_file_format=True)
        return path

    return _make


@pytest.fixture(scope="session", autouse=True)
def isolated_bentoml_home(tmp_path_factory) -> Path:
    """Every test run gets its own BentoML store: tests never touch ~/bentoml."""
    import os

    home = tmp_path_factory.mktemp("bentoml_home")
    os.environ["BENTOML_HOME"] = str(home)
    return home


@pytest.fixture(scope="session", autouse=True)
def isolated_state_dir(tmp_path_factory) -> Path:
    """Every test run gets its own state folder (prediction log, monitoring, serving record)."""
    import os

    from cxr_triage.state import PREDICTION_LOG_ENV, STATE_DIR_ENV

    state = tmp_path_factory.mktemp("state")
    os.environ[STATE_DIR_ENV] = str(state)
    os.environ.pop(PREDICTION_LOG_ENV, None)
    return state


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A tiny trained pipeline (synth .. package) under a temporary folder, built once."""
    from pipeline_fixture import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_pipeline"))
