"""cxr_triage.io.dicom: refusal rules, intensity pipeline and PHI handling of DICOM radiographs."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, JPEG2000Lossless, JPEGLSLossless, RLELossless

from cxr_triage.errors import (
    CodecUnavailableError,
    DecompressionBombError,
    ImageTooLargeError,
    InvalidImageError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedPixelDataError,
    UnsupportedImageTypeError,
    UnsupportedModalityError,
)
from cxr_triage.io.dicom import parse_age, read_dicom
from cxr_triage.io.images import read_image
from cxr_triage.io.records import ImageLimits
from helpers.dicom import SIIM

JPEG_XL = "1.2.840.10008.1.2.4.110"  # JPEG XL Lossless: no pydicom 3.0 decoder exists

# Every file of ../shared/data/dicom and what reading it must give (None = a usable image).
SHARED_EXPECTED: dict[str, tuple[type[InvalidImageError], str] | None] = {
    "RG1_UNCR.dcm": None,
    SIIM: None,
    "txv_Fake_MONOHR1.dcm": None,
    "CT_small.dcm": (UnsupportedModalityError, "wrong_modality"),
    "JPEG2000.dcm": (UnsupportedModalityError, "wrong_modality"),
    "MR_small_RLE.dcm": (UnsupportedModalityError, "wrong_modality"),
    "MR_truncated.dcm": (UnsupportedModalityError, "wrong_modality"),
    "emri_small.dcm": (UnsupportedModalityError, "wrong_modality"),
    "reportsi.dcm": (UnsupportedModalityError, "wrong_modality"),
    "SC_rgb_jpeg_dcmtk.dcm": (UnsupportedModalityError, "wrong_modality"),
    "derived/cxr_RG1half_no_pixeldata.dcm": (NoPixelDataError, "no_pixel_data"),
    "derived/not_dicom_random_bytes.dcm": (NotAnImageError, "not_an_image"),
}


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, output in [0, 1]."""
    return np.clip((np.asarray(x, np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


# --- real files from ../shared/data/dicom ------------------------------------------------------


@pytest.mark.shared_data
def test_shared_dicom_table_covers_every_file(shared_data: Path) -> None:
    folder = shared_data / "dicom"
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*.dcm")}
    assert on_disk == set(SHARED_EXPECTED)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(SHARED_EXPECTED))
def test_read_image_shared_dicom_gives_expected_outcome(shared_data: Path, name: str) -> None:
    path = shared_data / "dicom" / name
    expected = SHARED_EXPECTED[name]
    if expected is None:
        decoded = read_image(path)
        assert decoded.pixels.dtype == np.float32
        assert decoded.pixels.shape == (decoded.meta.rows, decoded.meta.cols)
        assert 0.0 <= float(decoded.pixels.min()) and float(decoded.pixels.max()) <= 1.0
        assert decoded.meta.modality == "CR" and decoded.meta.body_part == "CHEST"
        return
    error_class, reason = expected
    with pytest.raises(error_class) as info:
        read_image(path)
    assert type(info.value) is error_class
    assert info.value.reason == reason


@pytest.mark.shared_data
def test_read_dicom_rg1_monochrome1_lungs_come_out_dark(
    shared_data: Path, shared_dicom_reads: dict[str, np.ndarray]
) -> None:
    pixels = shared_dicom_reads["RG1_UNCR.dcm"]
    rows, cols = pixels.shape
    assert (rows, cols) == (1955, 1841)
    band = slice(int(0.35 * rows), int(0.60 * rows))
    lungs = np.concatenate(
        [
            pixels[band, int(0.20 * cols) : int(0.35 * cols)].ravel(),
            pixels[band, int(0.65 * cols) : int(0.80 * cols)].ravel(),
        ]
    )
    mediastinum = pixels[band, int(0.45 * cols) : int(0.55 * cols)]
    assert float(lungs.mean()) < float(mediastinum.mean()) - 0.1


@pytest.mark.shared_data
def test_read_dicom_rg1_follows_linear_window_then_inversion(
    shared_data: Path, shared_dicom_reads: dict[str, np.ndarray]
) -> None:
    ds = pydicom.dcmread(shared_data / "dicom" / "RG1_UNCR.dcm")
    stored = ds.pixel_array
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    pixels = shared_dicom_reads["RG1_UNCR.dcm"]
    for r, c in [(100, 100), (977, 920), (1500, 300), (1900, 1800)]:
        expected = 1.0 - linear_window(stored[r, c], center, width)
        assert pixels[r, c] == pytest.approx(expected, abs=1e-5)


@pytest.mark.shared_data
def test_read_dicom_fake_monochrome1_is_inverse_of_siim_twin(
    shared_data: Path, shared_dicom_reads: dict[str, np.ndarray]
) -> None:
    fake = read_image(shared_data / "dicom" / "txv_Fake_MONOHR1.dcm")
    assert fake.meta.photometric == "MONOCHROME1"
    siim = shared_dicom_reads[SIIM]
    assert float(siim.std()) > 0.1
    np.testing.assert_allclose(fake.pixels, 1.0 - siim, atol=1e-6)


@pytest.mark.shared_data
def test_read_dicom_truncated_mr_when_mr_allowed_is_truncated(shared_data: Path) -> None:
    limits = ImageLimits(allowed_modalities=("CR", "DX", "MR"))
    with pytest.raises(TruncatedPixelDataError) as info:
        read_dicom(shared_data / "dicom" / "MR_truncated.dcm", limits)
    assert info.value.reason == "truncated_pixel_data"
    assert "8130 of 8192 bytes" in str(info.value)


@pytest.mark.shared_data
def test_read_dicom_multiframe_mr_when_mr_allowed_is_unsupported_type(shared_data: Path) -> None:
    path = shared_data / "dicom" / "emri_small.dcm"
    with pytest.raises(UnsupportedModalityError, match="HEAD"):
        read_dicom(path, ImageLimits(allowed_modalities=("CR", "DX", "MR")))
    limits = ImageLimits(allowed_modalities=("CR", "DX", "MR"), allowed_body_parts=("HEAD",))
    with pytest.raises(UnsupportedImageTypeError, match="multi-frame") as info:
        read_dicom(path, limits)
    assert info.value.reason == "unsupported_image_type"


@pytest.mark.shared_data
def test_read_dicom_colour_secondary_capture_when_ot_allowed_is_unsupported_type(
    shared_data: Path,
) -> None:
    limits = ImageLimits(allowed_modalities=("CR", "DX", "OT"))
    with pytest.raises(UnsupportedImageTypeError, match="YBR_FULL, 3 samples") as info:
        read_dicom(shared_data / "dicom" / "SC_rgb_jpeg_dcmtk.dcm", limits)
    assert info.value.reason == "unsupported_image_type"


@pytest.mark.shared_data
def test_read_dicom_real_rle_and_j2k_decode_when_modality_allowed(shared_data: Path) -> None:
    rle = shared_data / "dicom" / "MR_small_RLE.dcm"
    decoded = read_dicom(rle, ImageLimits(allowed_modalities=("MR",)))
    assert decoded.pixels.shape == (64, 64)
    ds = pydicom.dcmread(rle)
    expected = linear_window(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-5)
    limits = ImageLimits(allowed_modalities=("NM",), allowed_body_parts=("WHOLE BODY",))
    assert read_dicom(shared_data / "dicom" / "JPEG2000.dcm", limits).pixels.shape == (1024, 256)


# --- intensity pipeline on generated files -----------------------------------------------------


def test_read_dicom_monochrome1_and_2_are_complementary(make_dicom) -> None:
    for window in ({}, {"window_center": 2048, "window_width": 1024}):
        mono2 = read_dicom(make_dicom(name="m2.dcm", **window)).pixels
        mono1 = read_dicom(make_dicom(name="m1.dcm", photometric="MONOCHROME1", **window)).pixels
        assert float(mono2.std()) > 0.2
        np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_read_dicom_12bit_window_clips_and_follows_linear_formula(make_dicom) -> None:
    stored = np.array(
        [[0, 1535, 1536, 1600], [2047, 2048, 2500, 2559], [2560, 3000, 4000, 4095]], np.uint16
    )
    pixels = read_dicom(make_dicom(stored, window_center=2048, window_width=1024)).pixels
    # LINEAR: x <= c - 0.5 - (w - 1) / 2 = 1536 -> 0; x > c - 0.5 + (w - 1) / 2 = 2559 -> 1.
    assert pixels[0, :3].tolist() == [0.0, 0.0, 0.0]
    assert pixels[2].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert pixels[1, 1] == pytest.approx(0.5 + 0.5 / 1023, abs=1e-6)
    assert pixels[1, 3] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(pixels, linear_window(stored, 2048, 1024), atol=1e-5)


def test_read_dicom_rescale_is_applied_before_window(make_dicom) -> None:
    path = make_dicom(
        rescale_slope=2, rescale_intercept=-1000, window_center=3000, window_width=2000
    )
    stored = pydicom.dcmread(path).pixel_array
    pixels = read_dicom(path).pixels
    expected = linear_window(2.0 * stored - 1000.0, 3000, 2000)
    np.testing.assert_allclose(pixels, expected, atol=1e-5)
    # Windowing the stored values directly would put most of the ramp elsewhere.
    assert np.abs(linear_window(stored, 3000, 2000) - expected).max() > 0.4


def test_read_dicom_without_window_maps_full_stored_range(make_dicom) -> None:
    stored = np.linspace(100, 1100, 48 * 64).round().astype(np.uint16).reshape(48, 64)
    for slope, intercept in ((1, 0), (0.5, -1024), (-1, 0)):
        pixels = read_dicom(
            make_dicom(stored, rescale_slope=slope, rescale_intercept=intercept)
        ).pixels
        expected = (stored.astype(np.float64) - 100.0) / 1000.0
        if slope < 0:
            expected = 1.0 - expected
        np.testing.assert_allclose(pixels, expected, atol=1e-5)


def test_read_dicom_signed_pixels_without_window_map_to_unit_range(make_dicom) -> None:
    stored = np.linspace(-1000, 3000, 48 * 64).round().reshape(48, 64)
    pixels = read_dicom(make_dicom(stored, bits_stored=16, pixel_representation=1)).pixels
    np.testing.assert_allclose(pixels, (stored + 1000.0) / 4000.0, atol=1e-5)


@pytest.mark.parametrize("rescale", [(1, 0), (None, None)])
def test_read_dicom_voi_lut_sequence_is_applied(make_dicom, rescale) -> None:
    lut = np.rint(np.sqrt(np.arange(4096) / 4095.0) * 65535).astype(np.uint16)
    # A window is present too: the LUT sequence takes precedence over it.
    path = make_dicom(
        voi_lut=(0, lut),
        window_center=100,
        window_width=10,
        rescale_slope=rescale[0],
        rescale_intercept=rescale[1],
    )
    stored = pydicom.dcmread(path).pixel_array
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "VOI LUT on a float input array" from pydicom
        pixels = read_dicom(path).pixels
    mapped = lut[stored].astype(np.float64)
    expected = (mapped - mapped.min()) / (mapped.max() - mapped.min())
    np.testing.assert_allclose(pixels, expected, atol=1e-5)


def test_read_dicom_linear_exact_window(make_dicom) -> None:
    path = make_dicom(window_center=2048, window_width=1000, voi_lut_function="LINEAR_EXACT")
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    expected = np.clip((stored - 2048.0) / 1000.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(read_dicom(path).pixels, expected, atol=1e-5)


def test_read_dicom_sigmoid_window_is_monotonic_in_unit_range(make_dicom) -> None:
    path = make_dicom(window_center=2048, window_width=1024, voi_lut_function="SIGMOID")
    pixels = read_dicom(path).pixels.ravel()  # the ramp increases in C order
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    assert np.all(np.diff(pixels) >= 0)
    assert pixels[len(pixels) // 2] == pytest.approx(0.5, abs=0.01)


def test_read_dicom_first_of_several_windows_is_used(make_dicom) -> None:
    path = make_dicom(window_center=[2048, 100], window_width=[1024, 50])
    stored = pydicom.dcmread(path).pixel_array
    np.testing.assert_allclose(
        read_dicom(path).pixels, linear_window(stored, 2048, 1024), atol=1e-5
    )


def test_read_dicom_empty_window_elements_mean_no_window(make_dicom) -> None:
    windowless = read_dicom(make_dicom(name="a.dcm")).pixels
    path = make_dicom(name="b.dcm", extra={"WindowCenter": None, "WindowWidth": None})
    assert "WindowCenter" in pydicom.dcmread(path)
    np.testing.assert_array_equal(read_dicom(path).pixels, windowless)


# --- refusals on generated files ---------------------------------------------------------------


def test_read_dicom_truncated_uncompressed_pixel_data_is_refused(make_dicom) -> None:
    with pytest.raises(TruncatedPixelDataError, match="6044 of 6144 bytes") as info:
        read_dicom(make_dicom(truncate_pixel_data=100))
    assert info.value.reason == "truncated_pixel_data"


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
def test_read_image_compressed_file_cut_off_is_truncated(make_dicom) -> None:
    noise = np.random.default_rng(0).integers(0, 4096, (48, 64))
    raw = make_dicom(noise, transfer_syntax=RLELossless).read_bytes()
    with pytest.raises(TruncatedPixelDataError) as info:
        read_image(raw[: len(raw) // 2])
    assert info.value.reason == "truncated_pixel_data"


def test_read_dicom_without_pixel_data_is_refused(make_dicom) -> None:
    with pytest.raises(NoPixelDataError) as info:
        read_dicom(make_dicom(drop=("PixelData",)))
    assert info.value.reason == "no_pixel_data"


def test_read_dicom_two_frames_is_unsupported_type(make_dicom) -> None:
    path = make_dicom(modality="CR", frames=2)
    with pytest.raises(UnsupportedImageTypeError, match=r"multi-frame DICOM \(2 frames\)") as info:
        read_dicom(path)
    assert info.value.reason == "unsupported_image_type"


def test_read_dicom_rgb_cr_is_unsupported_type(make_dicom) -> None:
    path = make_dicom(modality="CR", samples_per_pixel=3, photometric="RGB", bits_stored=8)
    with pytest.raises(UnsupportedImageTypeError, match="RGB, 3 samples per pixel") as info:
        read_dicom(path)
    assert info.value.reason == "unsupported_image_type"


@pytest.mark.parametrize("photometric", ["PALETTE COLOR", "YBR_FULL", ""])
def test_read_dicom_non_monochrome_photometric_is_unsupported_type(
    make_dicom, photometric: str
) -> None:
    with pytest.raises(UnsupportedImageTypeError) as info:
        read_dicom(make_dicom(photometric=photometric))
    assert info.value.reason == "unsupported_image_type"


@pytest.mark.parametrize(("modality", "body_part"), [("DX", "HAND"), ("CT", "CHEST"), ("", None)])
def test_read_dicom_wrong_modality_or_body_part_is_refused(
    make_dicom, modality: str, body_part: str | None
) -> None:
    with pytest.raises(UnsupportedModalityError) as info:
        read_dicom(make_dicom(modality=modality, body_part=body_part))
    assert info.value.reason == "wrong_modality"


@pytest.mark.parametrize("body_part", [None, "", "CHEST", "THORAX"])
def test_read_dicom_absent_or_chest_body_part_is_accepted(make_dicom, body_part) -> None:
    decoded = read_dicom(make_dicom(modality="CR", body_part=body_part))
    assert decoded.meta.modality == "CR"
    assert decoded.meta.body_part in ("", "CHEST", "THORAX")


def test_read_dicom_transfer_syntax_without_decoder_is_codec_unavailable(
    make_dicom, tmp_path: Path
) -> None:
    # pydicom 3.0 refuses to write an unknown syntax, so write a known encapsulated one of the
    # same length and patch the UID in the file meta header.
    ds = pydicom.dcmread(make_dicom())
    ds.PixelData = encapsulate([b"\xff\x0a" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(tmp_path / "mpeg.dcm", enforce_file_format=True)
    raw = (tmp_path / "mpeg.dcm").read_bytes()
    assert raw.count(MPEG2MPML.encode()) == 1 and len(MPEG2MPML) == len(JPEG_XL)
    path = tmp_path / "jpegxl.dcm"
    path.write_bytes(raw.replace(MPEG2MPML.encode(), JPEG_XL.encode()))
    with pytest.raises(CodecUnavailableError, match=JPEG_XL.replace(".", r"\.")) as info:
        read_dicom(path)
    assert info.value.reason == "codec_unavailable"


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_read_dicom_lossless_compressed_equals_uncompressed(make_dicom, syntax) -> None:
    stored = np.random.default_rng(1).integers(0, 4096, (48, 64)).astype(np.uint16)
    plain = read_dicom(make_dicom(stored, name="plain.dcm", window_center=2000, window_width=3000))
    packed_path = make_dicom(
        stored, name="packed.dcm", window_center=2000, window_width=3000, transfer_syntax=syntax
    )
    assert pydicom.dcmread(packed_path).file_meta.TransferSyntaxUID == syntax
    packed = read_dicom(packed_path)
    assert packed.meta.transfer_syntax == syntax.name
    np.testing.assert_array_equal(packed.pixels, plain.pixels)


def test_read_dicom_missing_decoder_plugins_names_packages(make_dicom, monkeypatch) -> None:
    path = make_dicom(transfer_syntax=RLELossless)
    missing = SimpleNamespace(is_available=False, is_native=False)
    monkeypatch.setattr("cxr_triage.io.dicom.checks.get_decoder", lambda uid: missing)
    with pytest.raises(CodecUnavailableError) as info:
        read_dicom(path)
    assert info.value.reason == "codec_unavailable"
    message = str(info.value)
    assert "RLE Lossless" in message
    for package in ("pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pyjpegls", "python-gdcm"):
        assert package in message


def test_read_dicom_more_pixels_than_limit_is_too_large(make_dicom) -> None:
    path = make_dicom()  # 48 x 64 = 3,072 pixels
    with pytest.raises(ImageTooLargeError, match="3,072 pixels exceeds the limit of 1,000") as exc:
        read_dicom(path, ImageLimits(max_pixels=1000))
    assert exc.value.reason == "image_too_large"


def test_read_dicom_huge_declared_size_with_tiny_data_is_bomb(make_dicom) -> None:
    path = make_dicom(extra={"Rows": 10000, "Columns": 10000})
    with pytest.raises(DecompressionBombError) as info:
        read_dicom(path)
    assert info.value.reason == "decompression_bomb"
    with pytest.raises(DecompressionBombError):
        read_dicom(path.read_bytes())


def test_read_dicom_random_bytes_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "noise.dcm"
    path.write_bytes(np.random.default_rng(2).bytes(4096))
    with pytest.raises(NotAnImageError) as info:
        read_dicom(path)
    assert info.value.reason == "not_an_image"


# --- sources, metadata and identifiers ---------------------------------------------------------


def test_read_dicom_bytes_equals_path(make_dicom) -> None:
    path = make_dicom(window_center=2048, window_width=3000)
    from_path, from_bytes = read_dicom(path), read_image(path.read_bytes())
    np.testing.assert_array_equal(from_bytes.pixels, from_path.pixels)
    assert from_bytes.meta == from_path.meta
    assert from_bytes.identifiers == from_path.identifiers


@pytest.mark.parametrize(("implicit", "little"), [(True, True), (False, True), (False, False)])
def test_read_image_dicom_without_preamble_is_read(
    make_dicom, tmp_path: Path, implicit: bool, little: bool
) -> None:
    path = make_dicom()
    reference = read_dicom(path)
    ds = pydicom.dcmread(path)
    if not little:
        ds.PixelData = ds.pixel_array.astype(">u2").tobytes()
    ds.preamble = None
    del ds.file_meta
    bare = tmp_path / "bare.dcm"
    pydicom.dcmwrite(bare, ds, implicit_vr=implicit, little_endian=little, force_encoding=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    for source in (bare, bare.read_bytes()):
        decoded = read_image(source)
        np.testing.assert_array_equal(decoded.pixels, reference.pixels)
        assert decoded.meta.modality == "DX"
    expected_syntax = {
        (True, True): "Implicit VR Little Endian",
        (False, True): "Explicit VR Little Endian",
        (False, False): "Explicit VR Big Endian",
    }[(implicit, little)]
    assert decoded.meta.transfer_syntax == expected_syntax


def test_read_dicom_identifiers_kept_apart_from_repr_and_meta(make_dicom) -> None:
    path = make_dicom(patient_id="PID-778899", patient_name="Doe^Jane", patient_sex="F")
    decoded = read_dicom(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert decoded.identifiers.patient_id == "PID-778899"
    assert decoded.identifiers.study_uid == ds.StudyInstanceUID
    assert decoded.identifiers.sop_instance_uid == ds.SOPInstanceUID
    meta_text = str(decoded.meta.to_dict())
    for secret in ("PID-778899", "Doe", "19600101", "ACC123", "Test Hospital", ds.SOPInstanceUID):
        assert secret not in repr(decoded)
        assert secret not in repr(decoded.identifiers)
        assert secret not in meta_text
    assert decoded.meta.sex == "F"


@pytest.mark.parametrize(("age", "years"), [("062Y", 62.0), ("006M", 0.5)])
def test_read_dicom_patient_age_in_years(make_dicom, age: str, years: float) -> None:
    assert read_dicom(make_dicom(patient_age=age)).meta.age_years == years


@pytest.mark.parametrize(
    ("value", "years"),
    [
        ("062Y", 62.0),
        ("006M", 0.5),
        ("026W", 0.5),
        ("030D", 0.08),
        ("62", None),
        ("Y", None),
        ("", None),
        (None, None),
        ("12X", None),
    ],
)
def test_parse_age_values(value: object, years: float | None) -> None:
    assert parse_age(value) == years
