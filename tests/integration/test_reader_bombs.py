"""Every way compressed input asks for memory is refused before a decoder allocates it.

Each bomb is built here (nothing committed) and read in a subprocess whose address space is
capped (``RLIMIT_AS``) a few hundred MB above what it uses after imports: a regression that
decodes first then fails with MemoryError (which the reader would turn into a different
refusal: the message is checked) or grows the peak RSS, instead of swapping the machine.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from cxr_triage.errors import FrameSizeMismatchError
from cxr_triage.io.images import read_image
from cxr_triage.io.records import ImageLimits
from helpers.pipeline import REPO

pytestmark = pytest.mark.integration

HEADROOM_MB = 768  # address space allowed on top of the interpreter with the reader imported
GROWTH_MB = 200  # peak RSS growth a guarded refusal stays under

CAPPED = r"""
import json, resource, sys
import numpy, pydicom, PIL.Image
from cxr_triage.errors import InvalidImageError
from cxr_triage.io.images import read_image
from cxr_triage.io.records import ImageLimits
vm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
cap = (vm_kb + int(sys.argv[2]) * 1024) * 1024
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_image(sys.argv[1], ImageLimits(**json.loads(sys.argv[3])))
    out = {"reason": None, "message": ""}
except InvalidImageError as exc:
    out = {"reason": exc.reason, "message": str(exc)}
out["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(out))
"""


def read_capped(path: Path, **limits: object) -> dict[str, object]:
    """Read ``path`` in a subprocess with a capped address space; the refusal and RSS growth."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CAPPED, str(path), str(HEADROOM_MB), json.dumps(limits)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_refused_bounded(outcome: dict[str, object], reason: str, fragment: str) -> None:
    assert outcome["reason"] == reason, outcome
    assert fragment in str(outcome["message"]), outcome
    assert "ran out of memory" not in str(outcome["message"])
    assert float(outcome["growth_mb"]) < GROWTH_MB, outcome


def encapsulated_dicom(
    make_dicom, path_name: str, frame: bytes, syntax: str, rows: int = 64, cols: int = 64
) -> Path:
    """An 8-bit DX whose header says ``rows`` x ``cols`` and whose one frame is ``frame``."""
    path = make_dicom(np.zeros((rows, cols)), name=path_name, bits_stored=8)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_bytes(size: int = 64, **params: object) -> bytes:
    grey = (np.arange(size * size) % 251).astype(np.uint8).reshape(size, size)
    import io

    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "JPEG", **params)
    return buffer.getvalue()


def patch_sof(data: bytes, marker: bytes, rows: int, cols: int) -> bytes:
    """Set the height and width of the first SOF segment with ``marker`` (B.2.2)."""
    at = data.index(marker)
    return data[: at + 5] + struct.pack(">HH", rows, cols) + data[at + 9 :]


def patch_file(path: Path, old_start: bytes, rewrite) -> Path:  # noqa: ANN001
    raw = path.read_bytes()
    at = raw.index(old_start, 132)
    path.write_bytes(rewrite(raw, at))
    return path


# --- DICOM codec frame headers ------------------------------------------------------------------


def test_jpeg_frame_far_larger_than_header_is_bomb_without_decoding(make_dicom) -> None:
    frame = patch_sof(jpeg_bytes(), b"\xff\xc0", 65000, 65000)  # 4.2 G pixels asked for
    path = encapsulated_dicom(make_dicom, "jpeg_bomb.dcm", frame, JPEGBaseline8Bit)
    outcome = read_capped(path)
    assert_refused_bounded(outcome, "decompression_bomb", "JPEG frame declares 65000 x 65000")


@pytest.mark.shared_data
def test_shared_d06_jpeg_7000px_in_64px_header_is_bomb_without_decoding(shared_data) -> None:
    path = shared_data.parent / "bugs" / "d06_jpeg_frame_larger_than_header"
    outcome = read_capped(path / "jpeg_7000px_in_64px_header.dcm")
    assert_refused_bounded(outcome, "decompression_bomb", "7000 x 7000")
    assert float(outcome["growth_mb"]) < 60  # 49 M pixels decoded would be >= 49 MB


def test_jpeg_frame_of_other_size_within_limits_is_frame_size_mismatch(make_dicom) -> None:
    path = encapsulated_dicom(make_dicom, "jpeg96.dcm", jpeg_bytes(96), JPEGBaseline8Bit)
    with pytest.raises(FrameSizeMismatchError, match="96 x 96 but the header declares 64 x 64"):
        read_image(path)


@pytest.mark.parametrize(
    ("syntax", "marker", "offset", "fmt", "codec"),
    [
        # SOF55 (ISO/IEC 14495-1 C.2.2): marker, Lf, P, then Y and X (2 bytes each).
        (JPEGLSLossless, b"\xff\xf7", 5, ">HH", "JPEG-LS"),
        # SIZ (ISO/IEC 15444-1 A.5.1): SOC, marker, Lsiz, Rsiz, then Xsiz and Ysiz (4 each).
        (JPEG2000Lossless, b"\xff\x4f\xff\x51", 8, ">II", "JPEG 2000"),
    ],
    ids=["jpeg_ls", "jpeg2000"],
)
def test_codestream_larger_than_header_is_bomb(make_dicom, syntax, marker, offset, fmt, codec):
    path = make_dicom(np.zeros((64, 64)), bits_stored=8, transfer_syntax=syntax)
    width = struct.calcsize(fmt)
    patch_file(
        path,
        marker,
        lambda raw, at: (
            raw[: at + offset] + struct.pack(fmt, 60000, 60000) + raw[at + offset + width :]
        ),
    )
    outcome = read_capped(path)
    assert_refused_bounded(outcome, "decompression_bomb", f"{codec} frame declares 60000 x 60000")


def test_rle_segment_decoding_far_past_header_is_refused_without_decoding(make_dicom) -> None:
    runs = 8 * 2**20  # each 2-byte run decodes to 128 bytes: 1 GiB from 16 MiB
    frame = struct.pack("<16I", 1, 64, *([0] * 14)) + b"\x81\x00" * runs
    path = encapsulated_dicom(make_dicom, "rle_bomb.dcm", frame, RLELossless)
    outcome = read_capped(path)
    assert_refused_bounded(
        outcome, "frame_size_mismatch", "RLE segment 1 decodes to more than the 4,096 bytes"
    )


def test_rle_segment_count_other_than_header_is_refused(make_dicom) -> None:
    segment = b"\x81\x00" * 32  # 4096 bytes each
    frame = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13)) + segment * 2
    path = encapsulated_dicom(make_dicom, "rle_two.dcm", frame, RLELossless)
    with pytest.raises(FrameSizeMismatchError, match="2 segments") as info:
        read_image(path)
    assert info.value.http_status == 422


# --- deflate, multi-frame, file size -----------------------------------------------------------


def deflated_dicom(make_dicom, tmp_path: Path, name: str, extra_zero_bytes: int) -> Path:
    """A Deflated Explicit VR LE file whose data set carries a private OB of zeros at its end."""
    ds = pydicom.dcmread(make_dicom(name=f"src_{name}"))
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    raw = body.getvalue()
    if extra_zero_bytes:
        raw += struct.pack("<HH2sHI", 0x7FE1, 0x1001, b"OB", 0, extra_zero_bytes)
    meta = ds.file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header = DicomBytesIO()
    write_file_meta_info(header, meta, enforce_standard=True)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    path = tmp_path / name
    with open(path, "wb") as out:
        out.write(b"\x00" * 128 + b"DICM" + header.getvalue())
        out.write(deflate.compress(raw))
        zeros, left = bytes(2**20), extra_zero_bytes
        while left:
            out.write(deflate.compress(zeros[: min(left, len(zeros))]))
            left -= min(left, len(zeros))
        out.write(deflate.flush())
    return path


def test_deflated_dataset_reads_like_the_plain_file(make_dicom, tmp_path: Path) -> None:
    path = deflated_dicom(make_dicom, tmp_path, "deflated.dcm", 0)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    plain = read_image(make_dicom(name="plain.dcm"))
    decoded = read_image(path)
    np.testing.assert_array_equal(decoded.pixels, plain.pixels)


def test_deflated_dataset_inflating_past_limit_is_bomb_without_inflating(
    make_dicom, tmp_path: Path
) -> None:
    path = deflated_dicom(make_dicom, tmp_path, "deflate_bomb.dcm", 2**30 + 2**28)
    assert path.stat().st_size < 4 * 2**20
    outcome = read_capped(path)
    assert_refused_bounded(outcome, "decompression_bomb", "max_inflated_bytes")


def test_multiframe_count_times_size_over_limit_is_bomb(make_dicom) -> None:
    path = make_dicom(extra={"NumberOfFrames": 100000, "Rows": 1000, "Columns": 1000})
    outcome = read_capped(path)
    assert_refused_bounded(outcome, "decompression_bomb", "100,000,000,000 pixels")


def test_file_over_max_file_bytes_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.dcm"
    with open(path, "wb") as fh:
        fh.truncate(3 * 2**30)  # sparse: 3 GiB on paper, nothing on disk
    outcome = read_capped(path)
    assert_refused_bounded(outcome, "image_too_large", "max_file_bytes")
    allowed = read_capped(path, max_file_bytes=10**12)  # read: zeros are no image at all
    assert allowed["reason"] == "not_an_image" and float(allowed["growth_mb"]) < GROWTH_MB


def test_header_of_millions_of_tiny_elements_is_refused_while_parsing(make_dicom) -> None:
    raw = make_dicom().read_bytes()
    pixel_tag = raw.index(b"\xe0\x7f\x10\x00")
    # 4 M empty private elements (0009,0000..) before the pixel data: 32 MB on disk, ~1 GB as
    # parsed elements.
    tiny = b"".join(struct.pack("<HH2sH", 0x0009, e, b"LO", 0) for e in range(0x10, 0x10000))
    path = make_dicom(name="tiny.dcm")
    path.write_bytes(raw[:pixel_tag] + tiny * 64 + raw[pixel_tag:])
    outcome = read_capped(path)
    assert_refused_bounded(outcome, "image_too_large", "max_header_elements")


# --- PNG / JPEG files ---------------------------------------------------------------------------


def png_with_ihdr_size(width: int, height: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("L", (16, 16), 0).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def test_png_ihdr_far_larger_than_data_is_bomb_before_pillow(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_ihdr_size(60000, 60000))
    outcome = read_capped(path)
    assert_refused_bounded(outcome, "decompression_bomb", "3,600,000,000 pixels")


def test_jpeg_sof_far_larger_than_data_is_bomb_before_pillow(tmp_path: Path) -> None:
    path = tmp_path / "bomb.jpg"
    path.write_bytes(patch_sof(jpeg_bytes(), b"\xff\xc0", 65000, 65000))
    outcome = read_capped(path)
    assert_refused_bounded(outcome, "decompression_bomb", "4,225,000,000 pixels")


def test_limits_are_explicit_fields_with_documented_defaults() -> None:
    limits = ImageLimits()
    assert limits.max_pixels == 40_000_000 and limits.bomb_ratio == 100.0
    assert limits.max_file_bytes == limits.max_inflated_bytes == 256 * 2**20
    assert limits.max_header_elements == 50_000
    for name in (
        "max_pixels",
        "bomb_ratio",
        "max_file_bytes",
        "max_inflated_bytes",
        "max_header_elements",
    ):
        assert f"{name}:" in (ImageLimits.__doc__ or "")


def test_explicit_vr_native_file_is_unaffected_by_codec_checks(make_dicom) -> None:
    path = make_dicom()
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert read_image(path).pixels.shape == (48, 64)
