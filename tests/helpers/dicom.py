"""Small synthetic CR/DX DICOM files for tests, written by the project's one DICOM writer.

``write_dicom`` builds the data set with ``cxr_triage.data.synth.dicom.image_dataset`` (the
generator's and the benchmarks' writer) and only adds the attributes a test asks for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxr_triage.data.synth.dicom import image_dataset

# A real SIIM-ACR DICOM in ../shared/data/dicom (see its README).
SIIM = "txv_siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def ramp_pixels(rows: int = 48, cols: int = 64, bits: int = 12) -> np.ndarray:
    """A deterministic image that covers the whole stored range 0 .. 2**bits - 1."""
    top = 2**bits - 1
    ramp = np.linspace(0, top, rows * cols).reshape(rows, cols)
    return np.rint(ramp).astype(np.uint16 if bits > 8 else np.uint8)


def write_dicom(folder: Path, pixels: np.ndarray | None = None, **overrides: object) -> Path:
    """Write a small CR/DX DICOM with the project's one writer (``image_dataset``).

    Returns the path of the written file (the ``make_dicom`` fixture binds ``folder`` to
    ``tmp_path``).
    Overrides (all optional):
        name: file name inside ``folder``.
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
        raise TypeError(f"write_dicom: unknown overrides {sorted(unknown)}")
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
    path = folder / str(opts["name"])
    ds.save_as(path, enforce_file_format=True)
    return path


def synth_dicoms(synth_dir: Path, n: int, site: str = "hospital_a") -> list[Path]:
    """The first ``n`` generated DICOMs of ``site`` under a synth stage's folder."""
    return sorted((Path(synth_dir) / site / "images").iterdir())[:n]


def with_header(source: Path, target: Path, **values: object) -> Path:
    """A copy of ``source`` with header attributes set (e.g. ``ViewPosition="LL"``)."""
    import pydicom

    ds = pydicom.dcmread(source)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(target)
    return target
