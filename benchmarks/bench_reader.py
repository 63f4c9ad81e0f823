"""Cost of the reader's guards over a bare pydicom decode, per transfer syntax.

On synthetic 2048 x 2048 DX files (12-bit, smooth content plus noise, invented identities),
written once as Explicit VR Little Endian (the common path), JPEG 2000 Lossless, RLE Lossless
and JPEG Baseline (8-bit, Pillow-encoded), this prints milliseconds per image for

- bare: ``pydicom.dcmread(path).pixel_array`` (decode only, no checks, no grey levels);
- read_image: the whole reader (file read, header conversion, pre-decode guards including the
  codec frame header parse, decode, window/inversion to float32);
- guards: the pre-decode part alone (``read_image`` on a copy whose pixel data cannot be
  decoded is not representative, so the guards are timed as ``read_image`` minus decode, by
  timing :func:`cxr_triage.io.dicom.read.check_dicom`, the steps before decoding, directly);

and the ratio read_image / bare. Each figure is the best of ``--repeat`` rounds (the machine is
shared: best-of is the stable statistic). Nothing here is a pass/fail assertion.

    python benchmarks/bench_reader.py --repeat 5
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from cxr_triage.io.dicom.read import check_dicom
from cxr_triage.io.images import read_image
from cxr_triage.io.records import ImageLimits
from cxr_triage.io.sources import open_source

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def synthetic(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    field = 0.5 + 0.2 * x - 0.3 * np.exp(-((np.abs(x) - 0.45) ** 2 / 0.05 + y**2 / 0.4))
    field += rng.normal(0, 0.01, field.shape)
    return np.clip(np.rint(field * 4095), 0, 4095).astype(np.uint16)


def write(path: Path, pixels: np.ndarray, syntax: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DX, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.PatientID = "DX", "CHEST", "BENCH"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.Rows, ds.Columns = pixels.shape
    bits = 8 if syntax == JPEGBaseline8Bit else 12
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        8 if bits == 8 else 16,
        bits,
        bits - 1,
        0,
    )
    ds.WindowCenter, ds.WindowWidth = (128, 256) if bits == 8 else (2048, 4096)
    if syntax == JPEGBaseline8Bit:
        buffer = io.BytesIO()
        Image.fromarray((pixels >> 4).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.PixelData = pixels.tobytes()
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def guards_only(path: Path, limits: ImageLimits) -> None:
    """Everything read_image does before handing the pixel data to the decoder."""
    with open_source(path, limits) as (fp, size):
        check_dicom(fp, size, limits)


def best_ms(fn, paths: list[Path], repeat: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for path in paths:
            fn(path)
        best = min(best, (time.perf_counter() - start) / len(paths))
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--n", type=int, default=4, help="files per syntax")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    limits = ImageLimits()
    syntaxes = {
        "Explicit VR LE": ExplicitVRLittleEndian,
        "JPEG Baseline": JPEGBaseline8Bit,
        "RLE Lossless": RLELossless,
        "JPEG 2000 Lossless": JPEG2000Lossless,
    }
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{args.size}x{args.size}, {args.n} files per syntax, best of {args.repeat}")
        print(
            f"{'syntax':<20} {'bare ms':>9} {'read_image ms':>14} {'ratio':>6} {'guards ms':>10}"
        )
        for label, syntax in syntaxes.items():
            n = args.n if syntax in (ExplicitVRLittleEndian, JPEGBaseline8Bit) else 2
            paths = [
                write(Path(tmp) / f"{label}-{i}.dcm", synthetic(args.size, rng), syntax)
                for i in range(n)
            ]
            for path in paths:  # warm the file cache and the decoders
                read_image(path)
            bare = best_ms(lambda p: pydicom.dcmread(p).pixel_array, paths, args.repeat)
            full = best_ms(lambda p: read_image(p, limits), paths, args.repeat)
            guards = best_ms(lambda p: guards_only(p, limits), paths, args.repeat)
            print(f"{label:<20} {bare:9.1f} {full:14.1f} {full / bare:6.2f} {guards:10.2f}")


if __name__ == "__main__":
    main()
