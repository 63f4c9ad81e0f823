"""cxr_triage.io.images: content sniffing, PNG/JPEG rules and ``inspect_image``."""

from __future__ import annotations

import gc
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_triage.errors import (
    DecompressionBombError,
    NotAnImageError,
    TruncatedPixelDataError,
    UnsupportedImageTypeError,
)
from cxr_triage.io.dicom import read_dicom
from cxr_triage.io.images import inspect_image, read_image, sniff_format
from cxr_triage.io.records import ImageLimits


def grey_ramp(rows: int = 40, cols: int = 56) -> np.ndarray:
    """8-bit grey image using every level from 0 to 255."""
    return np.rint(np.linspace(0, 255, rows * cols)).astype(np.uint8).reshape(rows, cols)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_read_image_8bit_grey_png_scaled_by_255(tmp_path: Path) -> None:
    grey = grey_ramp()
    decoded = read_image(write(tmp_path / "a.png", encode(Image.fromarray(grey), "PNG")))
    assert decoded.pixels.dtype == np.float32
    np.testing.assert_allclose(decoded.pixels, grey / 255.0, atol=1e-7)
    meta = decoded.meta
    assert (meta.format, meta.rows, meta.cols, meta.bits_stored) == ("png", 40, 56, 8)
    assert meta.photometric == "MONOCHROME2" and meta.modality == ""


@pytest.mark.parametrize("top", [65535, 200])  # a dark 16-bit image is not taken for 8-bit
def test_read_image_16bit_png_scaled_by_65535(tmp_path: Path, top: int) -> None:
    grey = np.rint(np.linspace(0, top, 40 * 56)).astype(np.uint16).reshape(40, 56)
    img = Image.fromarray(grey)
    assert img.mode == "I;16"
    decoded = read_image(write(tmp_path / "a.png", encode(img, "PNG")))
    assert decoded.meta.bits_stored == 16
    np.testing.assert_allclose(decoded.pixels, grey / 65535.0, atol=1e-7)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_read_image_grey_saved_in_colour_mode_is_accepted(tmp_path: Path, mode: str) -> None:
    grey = grey_ramp()
    data = encode(Image.fromarray(grey).convert(mode), "PNG")
    assert Image.open(io.BytesIO(data)).mode == mode
    decoded = read_image(data)
    assert decoded.pixels.shape == grey.shape
    np.testing.assert_allclose(decoded.pixels, grey / 255.0, atol=1e-6)


def test_read_image_colourful_png_is_unsupported_type() -> None:
    grey = grey_ramp()
    rgb = np.stack([grey, 255 - grey, np.full_like(grey, 128)], axis=-1)
    with pytest.raises(UnsupportedImageTypeError, match="colour image") as info:
        read_image(encode(Image.fromarray(rgb), "PNG"))
    assert info.value.reason == "unsupported_image_type"


def test_read_image_grey_jpeg_is_accepted(tmp_path: Path) -> None:
    grey = np.tile(np.rint(np.linspace(0, 255, 64)).astype(np.uint8), (48, 1))
    decoded = read_image(write(tmp_path / "a.jpg", encode(Image.fromarray(grey), "JPEG")))
    assert decoded.meta.format == "jpeg" and decoded.pixels.shape == (48, 64)
    assert np.abs(decoded.pixels - grey / 255.0).max() < 8 / 255


def test_read_image_colour_saved_grey_jpeg_is_accepted() -> None:
    grey = np.tile(np.rint(np.linspace(0, 255, 64)).astype(np.uint8), (48, 1))
    decoded = read_image(encode(Image.fromarray(grey).convert("RGB"), "JPEG", quality=95))
    assert np.abs(decoded.pixels - grey / 255.0).max() < 8 / 255


def test_read_image_applies_exif_orientation() -> None:
    grey = grey_ramp(rows=32, cols=64)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    decoded = read_image(encode(Image.fromarray(grey), "JPEG", exif=exif, quality=95))
    assert decoded.pixels.shape == (64, 32)
    assert (decoded.meta.rows, decoded.meta.cols) == (64, 32)


def test_read_image_truncated_png_is_truncated(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    for source in (data[: len(data) // 2], write(tmp_path / "cut.png", data[: len(data) // 2])):
        with pytest.raises(TruncatedPixelDataError) as info:
            read_image(source)
        assert info.value.reason == "truncated_pixel_data"


def test_read_image_truncated_jpeg_is_truncated() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    with pytest.raises(TruncatedPixelDataError):
        read_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"patient_id,label\nP1,normal\n", "neither DICOM, PNG nor JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "PNG file cannot be decoded"),
    ],
    ids=["empty", "text", "png_magic_only"],
)
def test_read_image_non_image_is_not_an_image(tmp_path: Path, content: bytes, message) -> None:
    for source in (write(tmp_path / "x.png", content), content):
        with pytest.raises(NotAnImageError, match=message) as info:
            read_image(source)
        assert info.value.reason == "not_an_image"


def test_read_image_missing_path_is_not_an_image(tmp_path: Path) -> None:
    for missing in (tmp_path / "nope.png", tmp_path):
        with pytest.raises(NotAnImageError, match="no such file") as info:
            read_image(missing)
        assert info.value.reason == "not_an_image"


def test_read_image_png_named_dcm_is_sniffed_as_png(tmp_path: Path) -> None:
    grey = grey_ramp()
    path = write(tmp_path / "image.dcm", encode(Image.fromarray(grey), "PNG"))
    assert sniff_format(path) == "png"
    decoded = read_image(path)
    assert decoded.meta.format == "png"
    np.testing.assert_allclose(decoded.pixels, grey / 255.0, atol=1e-7)


def test_read_image_dicom_named_png_is_sniffed_as_dicom(make_dicom) -> None:
    dicom = make_dicom()
    renamed = dicom.with_suffix(".png")
    dicom.rename(renamed)
    assert sniff_format(renamed) == "dicom"
    decoded = read_image(renamed)
    assert decoded.meta.format == "dicom" and decoded.meta.modality == "DX"
    np.testing.assert_array_equal(decoded.pixels, read_dicom(renamed).pixels)


def test_sniff_format_jpeg_and_unknown() -> None:
    assert sniff_format(encode(Image.fromarray(grey_ramp()), "JPEG")) == "jpeg"
    assert sniff_format(b"GIF89a" + bytes(200)) == "unknown"
    assert sniff_format(b"") == "unknown"


def test_read_image_black_png_of_many_pixels_is_bomb(tmp_path: Path) -> None:
    data = encode(Image.new("L", (2000, 2000), 0), "PNG")
    assert len(data) < 40_000  # 4 M pixels from a few kilobytes
    limits = ImageLimits(max_pixels=1_000_000)
    for source in (data, write(tmp_path / "black.png", data)):
        with pytest.raises(DecompressionBombError) as info:
            read_image(source, limits)
        assert info.value.reason == "decompression_bomb"


def test_read_image_refused_png_path_leaves_no_open_file(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    cases = [
        (write(tmp_path / "black.png", encode(Image.new("L", (2000, 2000), 0), "PNG")), 10**6),
        (write(tmp_path / "cut.png", data[: len(data) // 2]), 10**6),
    ]
    gc.collect()  # earlier tests' garbage (e.g. a client's temp dir) must not warn in here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path, max_pixels in cases:
            try:
                read_image(path, ImageLimits(max_pixels=max_pixels))
            except (DecompressionBombError, TruncatedPixelDataError):
                pass
            gc.collect()  # frees the traceback's frames: an open file would warn here
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert [m for m in leaks if str(tmp_path) in m or "unclosed file" in m] == []


def test_read_image_png_bytes_equals_path(tmp_path: Path) -> None:
    data = encode(Image.fromarray(grey_ramp()), "PNG")
    from_bytes, from_path = read_image(data), read_image(write(tmp_path / "a.png", data))
    np.testing.assert_array_equal(from_bytes.pixels, from_path.pixels)
    assert from_bytes.meta == from_path.meta


def test_inspect_image_refused_dicom_reports_reason_and_metadata(make_dicom) -> None:
    path = make_dicom(body_part="HAND", patient_id="SECRET-ID", patient_age="045Y")
    report = inspect_image(path)
    assert report["usable"] is False
    assert report["reason"] == "wrong_modality"
    assert "HAND" in str(report["message"])
    assert report["file"] == str(path)
    assert (report["format"], report["modality"], report["body_part"]) == ("dicom", "DX", "HAND")
    assert (report["rows"], report["cols"], report["age_years"]) == (48, 64, 45.0)
    assert "SECRET-ID" not in str(report)


def test_inspect_image_usable_png_reports_metadata(tmp_path: Path) -> None:
    report = inspect_image(write(tmp_path / "a.png", encode(Image.fromarray(grey_ramp()), "PNG")))
    assert report["usable"] is True and report["reason"] == "" and report["message"] == ""
    assert (report["format"], report["rows"], report["cols"]) == ("png", 40, 56)


def test_inspect_image_random_bytes_reports_not_an_image(tmp_path: Path) -> None:
    path = write(tmp_path / "noise.dcm", np.random.default_rng(3).bytes(4096))
    report = inspect_image(path)
    assert (report["usable"], report["reason"]) == (False, "not_an_image")
    assert "rows" not in report


@pytest.mark.shared_data
def test_inspect_image_shared_no_pixel_data_keeps_header_metadata(shared_data: Path) -> None:
    report = inspect_image(shared_data / "dicom" / "derived" / "cxr_RG1half_no_pixeldata.dcm")
    assert (report["usable"], report["reason"]) == (False, "no_pixel_data")
    assert (report["modality"], report["photometric"]) == ("CR", "MONOCHROME1")
    assert (report["rows"], report["cols"]) == (977, 920)
