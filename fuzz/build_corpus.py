"""Build the seed corpus of ``fuzz/fuzz_read_image.py`` into a (git-ignored) folder.

Seeds: every file of ``../shared/data/dicom`` and ``../shared/bugs`` (as they are; libFuzzer cuts
the large ones to ``-max_len``, which makes them truncation cases), small re-encodings of the
large real DICOMs, and generated edge cases: DICOM in every transfer syntax the reader decodes
(native little/big endian, implicit, deflated, RLE, JPEG baseline, JPEG-LS, JPEG 2000), without
preamble, without Transfer Syntax UID, with padding, LUTs, windows, MONOCHROME1, signed pixels;
PNG in every colour type and bit depth, interlaced, with ICC/text/EXIF chunks; JPEG grey, colour,
progressive, with EXIF orientation. Every generated seed is small (a few kB) so that executions
stay fast.

    python fuzz/build_corpus.py --out .cache/fuzz/seeds
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import shutil
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared").resolve()
DX = "1.2.840.10008.5.1.4.1.1.1.1"
log = logging.getLogger("build_corpus")


def _ramp(rows: int = 32, cols: int = 40, top: int = 4095) -> np.ndarray:
    return np.rint(np.linspace(0, top, rows * cols)).reshape(rows, cols)


def dicom_seed(
    pixels: np.ndarray,
    *,
    syntax: str = ExplicitVRLittleEndian,
    bits: int = 12,
    preamble: bool = True,
    meta_syntax: bool = True,
    **elements: object,
) -> bytes:
    """A small single-frame DX in ``syntax``; ``elements`` are set on the data set last."""
    allocated = 8 if bits <= 8 else 16
    signed = int(elements.get("PixelRepresentation", 0)) == 1
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16}.get(
        (allocated, signed), np.int16
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["seed"])
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DX, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PatientID, ds.PatientSex, ds.PatientAge = "FUZZ", "F", "040Y"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        allocated,
        bits,
        bits - 1,
        0,
    )
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.asarray(pixels).astype(dtype).tobytes()
    if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(syntax)
    elif syntax == JPEGBaseline8Bit:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(pixels).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        ds.LossyImageCompression = "01"
    elif syntax == ExplicitVRBigEndian:
        ds.PixelData = np.asarray(pixels).astype(np.dtype(dtype).newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    if not preamble:
        ds.preamble = None
        implicit = syntax == ImplicitVRLittleEndian
        little = syntax != ExplicitVRBigEndian
        del ds.file_meta
        pydicom.dcmwrite(out, ds, implicit_vr=implicit, little_endian=little, force_encoding=True)
        return out.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    if not meta_syntax:  # drop (0002,0010) the way some exporters do (bugs/d03)
        ds2 = pydicom.dcmread(io.BytesIO(data))
        del ds2.file_meta.TransferSyntaxUID
        out = io.BytesIO()
        ds2.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=False)
        data = out.getvalue()
    return data


def _lut_item(values: np.ndarray, first: int = 0, bits: int = 16) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(values), first, bits]
    item.LUTData = np.asarray(values, "<u2").tobytes()
    return item


def dicom_seeds() -> Iterator[tuple[str, bytes]]:
    ramp = _ramp()
    for name, syntax in [
        ("explicit_le", ExplicitVRLittleEndian),
        ("implicit_le", ImplicitVRLittleEndian),
        ("explicit_be", ExplicitVRBigEndian),
        ("deflated", DeflatedExplicitVRLittleEndian),
        ("rle", RLELossless),
        ("jpegls", JPEGLSLossless),
        ("j2k", JPEG2000Lossless),
    ]:
        yield f"dcm_{name}.dcm", dicom_seed(ramp, syntax=syntax)
    yield "dcm_jpeg_baseline.dcm", dicom_seed(_ramp(top=255), syntax=JPEGBaseline8Bit, bits=8)
    yield "dcm_8bit.dcm", dicom_seed(_ramp(top=255), bits=8)
    yield "dcm_bare_implicit.dcm", dicom_seed(ramp, syntax=ImplicitVRLittleEndian, preamble=False)
    yield "dcm_bare_explicit.dcm", dicom_seed(ramp, preamble=False)
    yield "dcm_no_ts.dcm", dicom_seed(ramp, meta_syntax=False)
    yield (
        "dcm_mono1_window.dcm",
        dicom_seed(
            ramp, PhotometricInterpretation="MONOCHROME1", WindowCenter=2048, WindowWidth=1024
        ),
    )
    yield (
        "dcm_rescale_exact.dcm",
        dicom_seed(
            ramp,
            RescaleSlope=2,
            RescaleIntercept=-1000,
            WindowCenter=[3000, 100],
            WindowWidth=[2000, 50],
            VOILUTFunction="LINEAR_EXACT",
        ),
    )
    yield (
        "dcm_sigmoid.dcm",
        dicom_seed(ramp, WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID"),
    )
    padded = ramp.copy()
    padded[:, :4] = 0
    yield "dcm_padding.dcm", dicom_seed(padded, PixelPaddingValue=0, PixelPaddingRangeLimit=3)
    yield "dcm_signed.dcm", dicom_seed(ramp - 2048, bits=16, PixelRepresentation=1)
    lut = np.rint(np.sqrt(np.arange(4096) / 4095.0) * 65535)
    yield "dcm_voi_lut.dcm", dicom_seed(ramp, VOILUTSequence=Sequence([_lut_item(lut)]))
    yield (
        "dcm_modality_lut.dcm",
        dicom_seed(ramp, ModalityLUTSequence=Sequence([_lut_item(lut[::16], bits=16)])),
    )
    yield "dcm_presentation_inverse.dcm", dicom_seed(ramp, PresentationLUTShape="INVERSE")
    yield "dcm_two_frames.dcm", dicom_seed(np.vstack([ramp, ramp]), NumberOfFrames=2, Rows=32)


def _png(img: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG", **params)
    return buffer.getvalue()


def _raw_png(width: int, height: int, depth: int, colour: int, rows: list[bytes]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([depth, colour, 0, 0, 0])
    idat = zlib.compress(b"".join(b"\x00" + r for r in rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def raster_seeds() -> Iterator[tuple[str, bytes]]:
    grey = _ramp(top=255).astype(np.uint8)
    img = Image.fromarray(grey)
    for mode in ("L", "LA", "RGB", "RGBA", "P", "1"):
        yield f"png_{mode}.png", _png(img.convert(mode))
    yield "png_interlaced.png", _png(img, optimize=False, interlace=1)
    yield "png_16bit.png", _png(Image.fromarray(_ramp(top=65535).astype(np.uint16)))
    for depth in (1, 2, 4):
        row = bytes((i * 37) % 256 for i in range(40 * depth // 8))
        yield f"png_grey_{depth}bit.png", _raw_png(40, 32, depth, 0, [row] * 32)
    wide = _ramp(top=65535).astype(">u2")
    for colour, channels in ((2, 3), (4, 2), (6, 4)):
        rows = [np.repeat(r, channels).astype(">u2").tobytes() for r in wide]
        yield f"png_16bit_colour{colour}.png", _raw_png(40, 32, 16, colour, rows)
    yield "png_icc_text.png", _png(img, icc_profile=b"\x00" * 256, pnginfo=_text_info())
    exif = Image.Exif()
    exif[0x0112] = 6
    yield "png_exif.png", _png(img, exif=exif)
    for name, params in [
        ("grey", {}),
        ("progressive", {"progressive": True}),
        ("exif", {"exif": exif}),
    ]:
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=85, **params)
        yield f"jpeg_{name}.jpg", buffer.getvalue()
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, "JPEG", quality=85)
    yield "jpeg_rgb.jpg", buffer.getvalue()


def _text_info():  # noqa: ANN202
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "seed")
    info.add_text("Software", "seed", zip=True)
    return info


def shrunk_shared_dicoms(folder: Path) -> Iterator[tuple[str, bytes]]:
    """Large real native DICOMs with their pixel data cut to a 32 x 32 corner."""
    for path in sorted(folder.rglob("*.dcm")):
        if path.stat().st_size < 64 * 1024:
            continue
        try:
            ds = pydicom.dcmread(path)
            if ds.file_meta.TransferSyntaxUID.is_compressed or "PixelData" not in ds:
                continue
            pixels = ds.pixel_array
            if pixels.ndim != 2:
                continue
            ds.PixelData = np.ascontiguousarray(pixels[:32, :32]).tobytes()
            ds.Rows, ds.Columns = 32, 32
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            yield f"shrunk_{path.stem}.dcm", out.getvalue()
        except Exception as exc:  # noqa: BLE001 - a seed we cannot shrink is just left out
            log.warning("not shrunk: %s (%s)", path.name, type(exc).__name__)


def build(out: Path) -> int:
    """Write every seed into ``out`` (emptied first); returns the number of files."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    seeds: list[tuple[str, bytes]] = []
    for sub in ("data/dicom", "bugs"):
        folder = SHARED / sub
        if folder.is_dir():
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                rel = path.relative_to(folder).as_posix().replace("/", "__")
                seeds.append((f"shared_{sub.replace('/', '_')}__{rel}", path.read_bytes()))
        else:
            log.warning("%s is absent: its files are not seeds", folder)
    if (SHARED / "data/dicom").is_dir():
        seeds += list(shrunk_shared_dicoms(SHARED / "data/dicom"))
    seeds += list(dicom_seeds()) + list(raster_seeds())
    for name, data in seeds:
        digest = hashlib.sha1(data).hexdigest()[:8]
        (out / f"{digest}_{name}").write_bytes(data)
    return len(seeds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "fuzz" / "seeds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    n = build(args.out)
    log.info("%d seeds in %s", n, args.out)


if __name__ == "__main__":
    sys.exit(main())
