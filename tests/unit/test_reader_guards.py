"""cxr_triage.io.guards: codestream headers read without decoding, on real encoder output."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from cxr_triage.io.guards import (
    FrameHeader,
    inflated_size,
    j2k_frame_header,
    jpeg_frame_header,
    png_critical_chunks,
    png_header,
    rle_segment_lengths,
)


def encoded_frame(make_dicom, syntax: str, pixels: np.ndarray, bits: int = 12) -> bytes:
    ds = pydicom.dcmread(make_dicom(pixels, bits_stored=bits, transfer_syntax=syntax))
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def test_jpeg_sof_of_pillow_output_with_fill_bytes_and_garbage() -> None:
    buffer = io.BytesIO()
    Image.new("L", (70, 30)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    fh = jpeg_frame_header(data)
    assert fh == FrameHeader("JPEG", rows=30, cols=70, components=1, precision=8, marker=0xC2)
    # Fill bytes before a marker and stray bytes between segments are skipped (libjpeg does).
    padded = data[:2] + b"\xff\xff\xff" + b"\x00\x12" + data[2:]
    assert jpeg_frame_header(padded) == fh
    assert jpeg_frame_header(data[:2] + b"\xff\xda\x00\x02") is None  # SOS before any SOF
    assert jpeg_frame_header(b"\xff\xd8\xff\xe0\x00") is None
    assert jpeg_frame_header(b"not a jpeg") is None


def test_jpeg_ls_sof55_of_pyjpegls_output(make_dicom) -> None:
    frame = encoded_frame(make_dicom, JPEGLSLossless, np.zeros((40, 56)))
    fh = jpeg_frame_header(frame)
    assert fh == FrameHeader("JPEG-LS", rows=40, cols=56, components=1, precision=12, marker=0xF7)


def test_j2k_siz_of_openjpeg_output_raw_and_in_jp2_box(make_dicom) -> None:
    frame = encoded_frame(make_dicom, JPEG2000Lossless, np.zeros((40, 56)))
    fh = j2k_frame_header(frame)
    assert fh == FrameHeader("JPEG 2000", rows=40, cols=56, components=1, precision=12)
    jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 "
    wrapped = jp2 + struct.pack(">I", 8 + len(frame)) + b"jp2c" + frame
    assert j2k_frame_header(wrapped) == fh
    assert j2k_frame_header(frame[:30]) is None
    assert j2k_frame_header(jp2) is None


def test_rle_segment_lengths_of_pydicom_output_equal_rows_times_columns(make_dicom) -> None:
    noise = np.random.default_rng(0).integers(0, 4096, (40, 56))
    frame = encoded_frame(make_dicom, RLELossless, noise)
    assert rle_segment_lengths(frame, 10**9) == [40 * 56, 40 * 56]  # high, low byte
    bomb = struct.pack("<16I", 1, 64, *([0] * 14)) + b"\x81\x00" * 1000
    assert rle_segment_lengths(bomb, 500) == [512]  # stops just past the limit
    assert rle_segment_lengths(struct.pack("<16I", 1, 60, *([0] * 14)), 9) is None
    assert rle_segment_lengths(b"\x01\x00", 9) is None


def test_png_header_and_critical_chunks() -> None:
    buffer = io.BytesIO()
    Image.new("L", (70, 30)).save(buffer, "PNG", icc_profile=b"\x00" * 64)
    data = buffer.getvalue()
    hdr = png_header(data)
    assert (hdr.width, hdr.height, hdr.bit_depth, hdr.colour_type, hdr.channels) == (
        70,
        30,
        8,
        0,
        1,
    )
    critical, cut = png_critical_chunks(data)
    assert not cut and b"iCCP" in data and b"iCCP" not in critical
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(critical))), np.zeros((30, 70)))
    assert png_critical_chunks(data[: len(data) - 20])[1] is True
    assert png_header(data[:20]) is None


def test_inflated_size_counts_in_bounded_steps() -> None:
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflate.compress(bytes(50 * 2**20)) + deflate.flush()
    assert len(stream) < 100_000
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    assert inflated_size(chunks, 10**9) == 50 * 2**20
    assert 2**20 < inflated_size(chunks, 2**20) <= 2**20 + 2**20  # stops just past the limit
    with pytest.raises(zlib.error):
        inflated_size([b"\xff" * 100], 10**9)
