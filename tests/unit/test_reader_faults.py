"""Whatever is wrong with a file, the reader answers with a typed refusal (never another
exception), with a stable reason and an HTTP status; inspect never raises; DICOM without
preamble is read and judged; a cut-off header says so."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

import cxr_triage.errors as errors
from cxr_triage.errors import (
    CodecUnavailableError,
    CorruptHeaderError,
    InvalidImageError,
    MissingTransferSyntaxError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedHeaderError,
    TruncatedPixelDataError,
    UnsupportedModalityError,
)
from cxr_triage.io.images import inspect_image, read_image

BUGS = "bugs"


def rewrite(path: Path, *elements: tuple) -> Path:
    """Replace elements by (tag, VR, value[, VR written]) whatever the dictionary says.

    With a fourth item the value is encoded with the first VR and the file then says the
    second (two VRs with the same length field), e.g. the text "abc" labelled DS.
    """
    ds = pydicom.dcmread(path)
    for tag, vr, value, *_ in elements:
        ds[tag] = DataElement(tag, vr, value)
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    for tag, vr, _, *written in elements:
        if written:
            old = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
            assert raw.count(old) == 1
            raw = raw.replace(old, old[:4] + written[0].encode())
    path.write_bytes(raw)
    return path


# --- header values that cannot be converted ---------------------------------------------------

BAD_HEADERS = [
    ("RescaleSlope", (0x00281053, "LO", "abc", "DS"), "not a number"),
    ("RescaleSlope", (0x00281053, "DS", "nan"), "not a finite number"),
    ("RescaleSlope", (0x00281053, "DS", ["1", "2"]), "2 values"),
    ("RescaleSlope", (0x00281053, "DS", "0"), "RescaleSlope is 0"),
    ("RescaleIntercept", (0x00281052, "DS", "1e999"), "not a finite number"),
    ("WindowCenter", (0x00281050, "LO", "center", "DS"), "not a number"),
    ("NumberOfFrames", (0x00280008, "IS", "1.5"), "not an integer"),
    ("Rows", (0x00280010, "US", [48, 48]), "2 values"),
    ("Rows", (0x00280010, "OB", b"\x30\x00\x00"), "Rows"),
    ("BitsStored", (0x00280101, "US", 20), "BitsStored is 20"),
    ("PixelRepresentation", (0x00280103, "US", 7), "PixelRepresentation is 7"),
    ("PixelPaddingValue", (0x00280120, "US", [0, 1]), "2 values"),
    ("BitsAllocated", (0x00280100, "LO", "sixteen"), "not an integer"),
]


@pytest.mark.parametrize(("keyword", "element", "fragment"), BAD_HEADERS)
def test_unconvertible_header_value_is_corrupt_header(
    make_dicom, unvalidated_writes, keyword: str, element: tuple, fragment: str
) -> None:
    path = rewrite(make_dicom(), element)
    with pytest.raises(CorruptHeaderError) as info:
        read_image(path)
    assert type(info.value) is CorruptHeaderError
    assert (info.value.reason, info.value.http_status) == ("corrupt_header", 400)
    assert keyword in str(info.value) and fragment in str(info.value)
    report = inspect_image(path)  # never raises; the metadata that can be read is kept
    assert (report["usable"], report["reason"]) == (False, "corrupt_header")
    assert report["modality"] == "DX"


def test_wrong_vr_for_modality_is_judged_on_its_value(make_dicom, unvalidated_writes) -> None:
    path = rewrite(make_dicom(), (0x00080060, "US", 16))
    with pytest.raises(UnsupportedModalityError, match="modality is 16"):
        read_image(path)


def test_integer_string_where_decimal_expected_is_read(make_dicom, unvalidated_writes) -> None:
    plain = read_image(make_dicom(name="a.dcm", rescale_slope=2)).pixels
    path = rewrite(make_dicom(name="b.dcm"), (0x00281053, "IS", "2"))
    np.testing.assert_array_equal(read_image(path).pixels, plain)


def test_unknown_transfer_syntax_string_is_codec_unavailable(make_dicom) -> None:
    raw = make_dicom().read_bytes()
    syntax = b"1.2.840.10008.1.2.1\x00"
    assert raw.count(syntax) == 1
    with pytest.raises(CodecUnavailableError) as info:
        read_image(raw.replace(syntax, b"1.2.840.10008.9.9.9\x00"))
    assert info.value.http_status == 415


# --- transfer syntax missing (bugs/d03) --------------------------------------------------------


@pytest.mark.shared_data
def test_shared_d03_no_transfer_syntax_reads_like_its_twin(shared_data: Path) -> None:
    folder = shared_data.parent / BUGS / "d03_no_transfer_syntax"
    decoded = read_image(folder / "no_transfer_syntax.dcm")
    reference = pydicom.dcmread(folder / "reference_with_ts.dcm")
    stored = reference.pixel_array.astype(np.float64)
    center, width = float(reference.WindowCenter), float(reference.WindowWidth)
    expected = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-5)
    assert decoded.meta.transfer_syntax == "Explicit VR Little Endian"


def test_compressed_pixels_without_transfer_syntax_are_refused(make_dicom) -> None:
    path = make_dicom(np.zeros((16, 16)), bits_stored=8)
    ds = pydicom.dcmread(path)
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, "JPEG")
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(path, implicit_vr=False, little_endian=True)
    with pytest.raises(MissingTransferSyntaxError) as info:
        read_image(path)
    assert (info.value.reason, info.value.http_status) == ("missing_transfer_syntax", 400)


# --- PNG chunks Pillow rejects (bugs/p01) -------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def with_chunk_after_ihdr(png: bytes, chunk: bytes) -> bytes:
    return png[:33] + chunk + png[33:]


def grey_png() -> tuple[np.ndarray, bytes]:
    grey = np.rint(np.linspace(0, 255, 40 * 56)).astype(np.uint8).reshape(40, 56)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    return grey, buffer.getvalue()


@pytest.mark.parametrize(
    "chunk",
    [
        # iCCP inflating past PngImagePlugin.MAX_TEXT_CHUNK (1 MiB): Pillow raises ValueError
        png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(2**20 + 16))),
        png_chunk(b"pHYs", b"\x00\x00\x0b\x13"),  # 4 of 9 bytes
        png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(2**21))),
    ],
    ids=["oversized_iccp", "truncated_phys", "oversized_ztxt"],
)
def test_png_with_ancillary_chunk_pillow_rejects_is_decoded_from_its_pixels(chunk) -> None:
    grey, png = grey_png()
    data = with_chunk_after_ihdr(png, chunk)
    with pytest.raises(ValueError):  # what Pillow alone does with it
        Image.open(io.BytesIO(data)).load()
    np.testing.assert_allclose(read_image(data).pixels, grey / 255.0, atol=1e-7)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["big_iccp.png", "truncated_phys.png"])
def test_shared_p01_pngs_decode_like_their_reference(shared_data: Path, name: str) -> None:
    folder = shared_data.parent / BUGS / "p01_png_chunk_valueerror"
    reference = np.asarray(Image.open(folder / "reference.png").convert("L"), np.float64) / 255
    np.testing.assert_allclose(read_image(folder / name).pixels, reference, atol=1e-7)


def test_png_with_corrupt_critical_chunk_is_corrupt_pixel_data() -> None:
    _, png = grey_png()
    idat = png.index(b"IDAT")
    broken = png[: idat + 4] + bytes(len(png) - idat - 16) + png[-12:]
    with pytest.raises(InvalidImageError) as info:
        read_image(broken)
    assert info.value.reason in ("corrupt_pixel_data", "truncated_pixel_data")
    assert type(info.value) is not InvalidImageError


# --- the last guard ----------------------------------------------------------------------------


def test_unforeseen_failure_is_refused_as_invalid_image(make_dicom, monkeypatch, caplog) -> None:
    def boom(*args: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("cxr_triage.io.images.decode_dicom", boom)
    with pytest.raises(InvalidImageError) as info:
        read_image(make_dicom())
    assert type(info.value) is InvalidImageError and info.value.reason == "invalid_image"
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert "ZeroDivisionError" in caplog.text and "a bug" not in caplog.text


@pytest.mark.parametrize("signal", [KeyboardInterrupt, SystemExit])
def test_interrupts_still_propagate(make_dicom, monkeypatch, signal) -> None:
    def stop(*args: object) -> None:
        raise signal()

    monkeypatch.setattr("cxr_triage.io.images.decode_dicom", stop)
    with pytest.raises(signal):
        read_image(make_dicom())


def test_every_refusal_class_has_a_reason_and_an_http_status() -> None:
    expected = {
        "NotAnImageError": ("not_an_image", 415),
        "NoPixelDataError": ("no_pixel_data", 422),
        "UnsupportedModalityError": ("wrong_modality", 422),
        "UnsupportedImageTypeError": ("unsupported_image_type", 422),
        "UnsupportedBitDepthError": ("unsupported_bit_depth", 422),
        "AmbiguousPolarityError": ("ambiguous_polarity", 422),
        "TruncatedPixelDataError": ("truncated_pixel_data", 400),
        "TruncatedHeaderError": ("truncated_header", 400),
        "CorruptHeaderError": ("corrupt_header", 400),
        "MissingTransferSyntaxError": ("missing_transfer_syntax", 400),
        "CorruptPixelDataError": ("corrupt_pixel_data", 400),
        "FrameSizeMismatchError": ("frame_size_mismatch", 422),
        "CodecUnavailableError": ("codec_unavailable", 415),
        "ImageTooLargeError": ("image_too_large", 413),
        "DecompressionBombError": ("decompression_bomb", 413),
        "QcFailedError": ("qc_failed", 422),  # the input quality gate (inference/qc.py)
    }
    classes = {
        name: getattr(errors, name)
        for name in errors.__all__
        if issubclass(getattr(errors, name), InvalidImageError) and name != "InvalidImageError"
    }
    assert set(classes) == set(expected)
    for name, cls in classes.items():
        assert (cls.reason, cls.http_status) == expected[name]
        assert cls.reason in (errors.__doc__ or ""), f"{cls.reason} is not documented"
    assert (InvalidImageError.reason, InvalidImageError.http_status) == ("invalid_image", 422)


# --- inspect never raises ----------------------------------------------------------------------


@pytest.mark.shared_data
def test_inspect_image_reports_every_bug_file_without_raising(shared_data: Path) -> None:
    files = [p for p in (shared_data.parent / BUGS).rglob("*") if p.is_file()]
    assert len(files) >= 8
    for path in files:
        report = inspect_image(path)
        assert report["file"] == str(path)
        assert report["usable"] is (report["reason"] == "")


def test_inspect_image_of_bytes_and_of_missing_file(tmp_path: Path) -> None:
    assert inspect_image(b"\x00" * 10)["reason"] == "not_an_image"
    assert inspect_image(tmp_path / "missing.dcm")["reason"] == "not_an_image"


# --- DICOM without preamble, cut-off headers ---------------------------------------------------


def bare(path: Path, tmp_path: Path, name: str, **changes: object) -> Path:
    """The data set of ``path`` written without preamble and file meta (ACR-NEMA style)."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.preamble = None
    del ds.file_meta
    out = tmp_path / name
    pydicom.dcmwrite(out, ds, implicit_vr=True, little_endian=True, force_encoding=True)
    assert out.read_bytes()[128:132] != b"DICM"
    return out


@pytest.mark.parametrize(
    ("changes", "error", "reason"),
    [
        ({"Modality": "CT"}, UnsupportedModalityError, "wrong_modality"),
        ({"PixelData": None}, NoPixelDataError, "no_pixel_data"),
        ({"BodyPartExamined": "HAND"}, UnsupportedModalityError, "wrong_modality"),
    ],
)
def test_dicom_without_preamble_is_judged_as_dicom(
    make_dicom, tmp_path: Path, changes: dict, error: type, reason: str
) -> None:
    path = bare(make_dicom(), tmp_path, "bare.dcm", **changes)
    with pytest.raises(error) as info:
        read_image(path)
    assert info.value.reason == reason
    assert inspect_image(path)["format"] == "dicom"


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_even_starting_like_a_data_set_are_not_an_image(seed: int) -> None:
    noise = np.random.default_rng(seed).bytes(2048)
    for prefix in (b"", b"\x08\x00\x05\x00", b"\x02\x00\x00\x00", b"\x00\x08"):
        with pytest.raises(NotAnImageError):
            read_image(prefix + noise)


def test_file_cut_anywhere_in_its_header_is_truncated_header(make_dicom) -> None:
    raw = make_dicom().read_bytes()
    pixel_tag = raw.index(b"\xe0\x7f\x10\x00")
    # Past the Image Pixel module, a cut exactly between two elements leaves a complete
    # header-only object: no_pixel_data, whose message says it may have been cut off.
    pixel_module_end = raw.index(b"\x28\x00\x03\x01US") + 10  # (0028,0103) + its 2 bytes
    boundaries = {pixel_module_end, *(m + 8 for m in range(pixel_module_end, pixel_tag))}
    reasons = {}
    for cut in range(133, pixel_tag + 12):
        try:
            read_image(raw[:cut])
            reasons[cut] = "usable"
        except InvalidImageError as exc:
            reasons[cut] = exc.reason
            if exc.reason == "no_pixel_data":
                assert "cut off" in str(exc)
    wrong = {
        c: r
        for c, r in reasons.items()
        if r != "truncated_header" and not (r == "no_pixel_data" and c >= pixel_module_end)
    }
    assert wrong == {}, wrong
    assert sum(r == "no_pixel_data" for r in reasons.values()) <= len(boundaries)
    with pytest.raises(TruncatedPixelDataError):
        read_image(raw[: pixel_tag + 200])


@pytest.mark.shared_data
def test_shared_real_cr_cut_in_its_header_is_truncated_not_wrong_modality(
    shared_data: Path,
) -> None:
    raw = (shared_data / "dicom" / "RG1_UNCR.dcm").read_bytes()
    for cut in (300, 600, 900):
        with pytest.raises(TruncatedHeaderError, match="cut off in transfer") as info:
            read_image(raw[:cut])
        assert info.value.http_status == 400
