"""No image is scored on silently wrong pixels: padding, bit depth, LUTs and polarity are either
decoded correctly or refused. Every reference is computed here with plain numpy from the stored
values (never with the reader's own code)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxr_triage.errors import (
    AmbiguousPolarityError,
    CorruptHeaderError,
    UnsupportedBitDepthError,
)
from cxr_triage.io.images import read_image


def min_max_reference(
    stored: np.ndarray, pad: np.ndarray, *, monochrome1: bool = False
) -> np.ndarray:
    """PS3.3 C.7.5.1.1.2: range over non-padding values, inverted for MONOCHROME1, padding 0."""
    values = stored.astype(np.float64)
    lo, hi = values[~pad].min(), values[~pad].max()
    out = (values - lo) / (hi - lo)
    if monochrome1:
        out = 1.0 - out
    out[pad] = 0.0
    return out


def anatomy(rows: int = 48, cols: int = 64, low: int = 900, high: int = 1400) -> np.ndarray:
    """Anatomy confined to a narrow band of stored values, as on a real detector."""
    rng = np.random.default_rng(7)
    return rng.integers(low, high + 1, (rows, cols)).astype(np.int64)


def shutters(shape: tuple[int, int]) -> np.ndarray:
    pad = np.zeros(shape, bool)
    pad[:, :10] = pad[:, -10:] = True
    pad[:6] = True
    return pad


# --- pixel padding (bugs/d02) -------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["mono2_pad0.dcm", "mono1_pad65535.dcm"])
def test_shared_d02_padding_is_out_of_the_range_and_black(shared_data: Path, name: str) -> None:
    folder = shared_data.parent / "bugs" / "d02_pixel_padding"
    pad = np.load(folder / "pad_mask.npy")
    ds = pydicom.dcmread(folder / name)
    reference = min_max_reference(
        ds.pixel_array, pad, monochrome1=ds.PhotometricInterpretation == "MONOCHROME1"
    )
    pixels = read_image(folder / name).pixels
    np.testing.assert_allclose(pixels, reference, atol=1e-5)
    assert pixels[~pad].min() == 0.0 and pixels[~pad].max() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("photometric", "pad_value", "range_limit", "bits", "fill"),
    [
        ("MONOCHROME2", 0, None, 12, 0),
        ("MONOCHROME1", 4095, None, 12, 4095),
        ("MONOCHROME2", 0, 30, 12, 17),  # Pixel Padding Range Limit: 0..30 is padding
        ("MONOCHROME1", 0xFFFF, None, 12, 4095),  # 16-bit padding value, 12 bits stored
    ],
)
def test_padding_value_and_range_never_set_the_range(
    make_dicom, photometric: str, pad_value: int, range_limit: int | None, bits: int, fill: int
) -> None:
    stored = anatomy()
    pad = shutters(stored.shape)
    stored[pad] = fill
    extra = {"PixelPaddingValue": pad_value}
    if range_limit is not None:
        extra["PixelPaddingRangeLimit"] = range_limit
    path = make_dicom(stored, photometric=photometric, bits_stored=bits, extra=extra)
    reference = min_max_reference(stored, pad, monochrome1=photometric == "MONOCHROME1")
    np.testing.assert_allclose(read_image(path).pixels, reference, atol=1e-5)


def test_signed_padding_value_is_read_as_signed(make_dicom) -> None:
    stored = anatomy(low=-300, high=500)
    pad = shutters(stored.shape)
    stored[pad] = -2000
    path = make_dicom(
        stored, bits_stored=16, pixel_representation=1, extra={"PixelPaddingValue": -2000}
    )
    np.testing.assert_allclose(read_image(path).pixels, min_max_reference(stored, pad), atol=1e-5)


def test_padding_with_a_window_is_black_and_the_window_is_kept(make_dicom) -> None:
    stored = anatomy()
    pad = shutters(stored.shape)
    stored[pad] = 4095
    path = make_dicom(
        stored,
        photometric="MONOCHROME1",
        window_center=1150,
        window_width=400,
        extra={"PixelPaddingValue": 4095},
    )
    windowed = np.clip((stored - (1150 - 0.5)) / (400 - 1) + 0.5, 0.0, 1.0)
    reference = 1.0 - windowed
    reference[pad] = 0.0
    np.testing.assert_allclose(read_image(path).pixels, reference, atol=1e-5)


def test_padding_on_the_lut_path_is_out_of_the_range(make_dicom) -> None:
    stored = anatomy()
    pad = shutters(stored.shape)
    stored[pad] = 0
    lut = np.rint(np.sqrt(np.arange(4096) / 4095.0) * 65535).astype(np.int64)
    path = make_dicom(stored, voi_lut=(0, lut), extra={"PixelPaddingValue": 0})
    mapped = lut[stored]
    np.testing.assert_allclose(read_image(path).pixels, min_max_reference(mapped, pad), atol=1e-5)


def test_image_of_padding_only_is_black(make_dicom) -> None:
    path = make_dicom(np.zeros((48, 64)), extra={"PixelPaddingValue": 0})
    assert float(read_image(path).pixels.max()) == 0.0


# --- LUTs --------------------------------------------------------------------------------------


def voi_lut_file(make_dicom, descriptor: list[int], data: bytes, vr: str = "OW") -> Path:
    path = make_dicom(np.arange(48 * 64).reshape(48, 64) % 256, bits_stored=8)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.add_new(0x00283006, vr, data)
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path, enforce_file_format=True)
    return path


def test_lut_data_narrower_than_its_descriptor_is_refused(make_dicom) -> None:
    lut = np.arange(128, dtype="<u2") * 100  # 128 entries where the descriptor says 256
    path = voi_lut_file(make_dicom, [256, 0, 16], lut.tobytes())
    with pytest.raises(CorruptHeaderError, match="narrower than it says") as info:
        read_image(path)
    assert info.value.reason == "corrupt_header"


def test_lut_values_wider_than_descriptor_bits_are_refused(make_dicom) -> None:
    lut = (np.arange(256, dtype=np.int64) * 16).astype("<u2")  # up to 4080 in an "8-bit" LUT
    path = voi_lut_file(make_dicom, [256, 0, 8], lut.tobytes())
    with pytest.raises(CorruptHeaderError, match="beyond the 8 bits"):
        read_image(path)


def test_packed_8bit_lut_entries_are_decoded(make_dicom) -> None:
    lut = np.rint(255 * (np.arange(256) / 255.0) ** 2).astype(np.uint8)  # one byte per entry
    path = voi_lut_file(make_dicom, [256, 0, 8], lut.tobytes(), vr="OB")
    stored = pydicom.dcmread(path).pixel_array.astype(np.int64)
    mapped = lut.astype(np.float64)[stored]
    reference = (mapped - mapped.min()) / (mapped.max() - mapped.min())
    np.testing.assert_allclose(read_image(path).pixels, reference, atol=1e-5)


def test_modality_lut_sequence_then_window(make_dicom) -> None:
    stored = np.arange(48 * 64).reshape(48, 64) % 4096
    table = (np.arange(4096) * 3 + 100).astype("<u2")
    path = make_dicom(stored, rescale_slope=None, rescale_intercept=None)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = table.tobytes()
    ds.ModalityLUTSequence = Sequence([item])
    ds.WindowCenter, ds.WindowWidth = 6000, 4000
    ds.save_as(path, enforce_file_format=True)
    values = table.astype(np.float64)[stored]
    windowed = np.clip((values - (6000 - 0.5)) / (4000 - 1) + 0.5, 0.0, 1.0)
    reference = (windowed - windowed.min()) / (windowed.max() - windowed.min())
    np.testing.assert_allclose(read_image(path).pixels, reference, atol=1e-5)


# --- polarity ----------------------------------------------------------------------------------


def test_monochrome2_with_presentation_lut_shape_inverse_is_refused(make_dicom) -> None:
    path = make_dicom(extra={"PresentationLUTShape": "INVERSE"})
    with pytest.raises(AmbiguousPolarityError) as info:
        read_image(path)
    assert (info.value.reason, info.value.http_status) == ("ambiguous_polarity", 422)


@pytest.mark.parametrize(
    ("photometric", "shape"), [("MONOCHROME1", "INVERSE"), ("MONOCHROME2", "IDENTITY")]
)
def test_consistent_presentation_lut_shape_is_read(make_dicom, photometric, shape) -> None:
    stored = np.arange(48 * 64).reshape(48, 64)
    path = make_dicom(stored, photometric=photometric, extra={"PresentationLUTShape": shape})
    reference = stored / stored.max()
    if photometric == "MONOCHROME1":
        reference = 1.0 - reference
    np.testing.assert_allclose(read_image(path).pixels, reference, atol=1e-5)


# --- PNG and JPEG bit depth ---------------------------------------------------------------------


def raw_png(width: int, height: int, depth: int, colour: int, rows: list[bytes]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + r for r in rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def sixteen_bit() -> np.ndarray:
    """12-bit data in a 16-bit container: the low byte carries most of the anatomy."""
    return np.rint(np.linspace(1000, 1800, 32 * 40)).astype(np.uint16).reshape(32, 40)


def test_16bit_grey_png_keeps_all_16_bits() -> None:
    values = sixteen_bit()
    data = raw_png(40, 32, 16, 0, [r.astype(">u2").tobytes() for r in values])
    pixels = read_image(data).pixels
    np.testing.assert_allclose(pixels, values / 65535.0, atol=1e-7)
    assert len(np.unique(pixels)) == len(np.unique(values))  # 801 levels, not 5


@pytest.mark.parametrize(("colour", "channels"), [(2, 3), (4, 2), (6, 4)])
def test_16bit_colour_typed_png_is_refused_not_reduced_to_8_bits(colour, channels) -> None:
    values = sixteen_bit()
    rows = [np.repeat(r, channels).astype(">u2").tobytes() for r in values]
    data = raw_png(40, 32, 16, colour, rows)
    reduced = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    assert len(np.unique(reduced)) <= 5  # what Pillow alone makes of 801 levels
    with pytest.raises(UnsupportedBitDepthError) as info:
        read_image(data)
    assert (info.value.reason, info.value.http_status) == ("unsupported_bit_depth", 422)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_low_bit_depth_grey_png_is_scaled_by_its_depth(depth: int) -> None:
    rng = np.random.default_rng(depth)
    levels = rng.integers(0, 2**depth, (32, 40))
    rows = []
    for row in levels:
        bits = "".join(format(int(v), f"0{depth}b") for v in row)
        rows.append(int(bits, 2).to_bytes(len(bits) // 8, "big"))
    pixels = read_image(raw_png(40, 32, depth, 0, rows)).pixels
    np.testing.assert_allclose(pixels, levels / (2**depth - 1), atol=1e-6)


def test_12bit_jpeg_is_refused_not_decoded_with_lost_bits() -> None:
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc1") if b"\xff\xc1" in data else data.index(b"\xff\xc0")
    data[sof + 1], data[sof + 4] = 0xC1, 12  # extended process, 12-bit samples
    with pytest.raises(UnsupportedBitDepthError, match="12-bit JPEG"):
        read_image(bytes(data))
