"""What compressed input asks for, read from its headers before any decoder allocates it.

A decoder sizes its output from the codestream it is given, not from the DICOM header (a JPEG
frame that says 7000 x 7000 inside a file whose header says 64 x 64 is decoded at 7000 x 7000),
so every codestream header is parsed here first and checked by the caller against the DICOM
header and :class:`~cxr_triage.io.records.ImageLimits`:

- JPEG (ISO/IEC 10918-1 B.2.2) and JPEG-LS (ISO/IEC 14495-1 C.2.2): the SOF segment;
- JPEG 2000 and HTJ2K (ISO/IEC 15444-1 A.5.1): the SIZ segment, also inside a JP2 wrapper;
- RLE Lossless (DICOM PS3.5 G.3): the segment table, and each segment's decoded length counted
  without decoding (a run of 2 bytes decodes to up to 128, so a small segment can ask for a lot);
- PNG (ISO/IEC 15948 11.2.2): the IHDR chunk;
- Deflated data sets (PS3.5 A.5): inflated in bounded steps, counting bytes and keeping none.

The parsers never raise on malformed input: they return None (no header found) and leave the
wording of the refusal to the caller. pydicom 3.0's own ``_get_jpg_parameters`` is private,
stops at fill bytes and ignores JPEG 2000 dimensions, hence these few lines.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "FrameHeader",
    "PngHeader",
    "inflated_size",
    "j2k_frame_header",
    "jpeg_frame_header",
    "png_critical_chunks",
    "png_header",
    "rle_segment_lengths",
]

# JPEG start-of-frame markers (B.1.1.3): C0-CF except DHT (C4), JPG (C8) and DAC (CC); F7 is
# JPEG-LS SOF55. Markers without a length field: TEM (01), RST0-7 (D0-D7), SOI (D8).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD9)) | {0x01}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks a PNG needs to be decoded (ISO/IEC 15948 5.6: the critical ones).
_PNG_CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")


@dataclass(frozen=True)
class FrameHeader:
    """Dimensions a codestream declares for its decoded frame.

    Attributes:
        codec: "JPEG", "JPEG-LS" or "JPEG 2000".
        rows: decoded height in pixels (0 for a JPEG whose height comes later, in a DNL segment).
        cols: decoded width in pixels.
        components: samples per pixel.
        precision: bits per sample.
        marker: the SOF marker byte for JPEG (0xC0 baseline, 0xC3 lossless, 0xF7 JPEG-LS...),
            0 otherwise.
        tiles: number of JPEG 2000 tiles (1 for JPEG).
    """

    codec: str
    rows: int
    cols: int
    components: int
    precision: int
    marker: int = 0
    tiles: int = 1

    @property
    def pixels(self) -> int:
        return self.rows * self.cols


def jpeg_frame_header(data: bytes | memoryview) -> FrameHeader | None:
    """The SOF segment of a JPEG or JPEG-LS codestream; None when there is none before SOS/EOI.

    Garbage between segments and fill bytes (0xFF runs) are skipped as libjpeg does.
    """
    buf = bytes(data[:2]) if isinstance(data, memoryview) else data[:2]
    if buf != b"\xff\xd8":
        return None
    n = len(data)
    pos = 2
    while pos + 1 < n:
        if data[pos] != 0xFF:
            pos += 1  # extraneous bytes: libjpeg warns and searches for the next marker
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1  # fill byte
            continue
        if marker == 0x00 or marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            return None
        if pos + 4 > n:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _SOF_MARKERS:
            if length < 8 or pos + 10 > n:
                return None
            return FrameHeader(
                codec="JPEG-LS" if marker == 0xF7 else "JPEG",
                precision=data[pos + 4],
                rows=(data[pos + 5] << 8) | data[pos + 6],
                cols=(data[pos + 7] << 8) | data[pos + 8],
                components=data[pos + 9],
                marker=marker,
            )
        if length < 2:
            return None
        pos += 2 + length
    return None


def _jp2_codestream_offset(data: bytes | memoryview) -> int | None:
    """Offset of the contiguous codestream (jp2c box) inside a JP2 file (ISO/IEC 15444-1 I.4)."""
    pos, n = 0, len(data)
    while pos + 8 <= n:
        length = struct.unpack_from(">I", data, pos)[0]
        box = bytes(data[pos + 4 : pos + 8])
        header = 8
        if length == 1:  # 64-bit XLBox follows
            if pos + 16 > n:
                return None
            length = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        if box == b"jp2c":
            return pos + header
        if length == 0 or length < header:  # 0: box runs to the end (and it is not jp2c)
            return None
        pos += length
    return None


def j2k_frame_header(data: bytes | memoryview) -> FrameHeader | None:
    """The SIZ segment of a JPEG 2000 / HTJ2K codestream (raw or JP2-wrapped); None if absent."""
    offset = 0
    if bytes(data[:12]) == _JP2_SIGNATURE:
        found = _jp2_codestream_offset(data)
        if found is None:
            return None
        offset = found
    # SOC then SIZ, which must come second (A.5.1); SIZ holds 38 bytes + 3 per component.
    if bytes(data[offset : offset + 4]) != b"\xff\x4f\xff\x51" or len(data) < offset + 44:
        return None
    (xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz, csiz) = struct.unpack_from(
        ">8IH", data, offset + 8
    )
    if len(data) < offset + 44 + 3 * max(csiz - 1, 0):
        return None
    ssiz = data[offset + 42]
    if xtsiz == 0 or ytsiz == 0 or xsiz <= xosiz or ysiz <= yosiz:
        return FrameHeader(codec="JPEG 2000", rows=0, cols=0, components=csiz, precision=0)
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    return FrameHeader(
        codec="JPEG 2000",
        rows=ysiz - yosiz,
        cols=xsiz - xosiz,
        components=csiz,
        precision=(ssiz & 0x7F) + 1,
        tiles=max(tiles, 0),
    )


def _rle_decoded_length(segment: bytes, limit: int) -> int:
    """Bytes a PackBits segment decodes to (PS3.5 G.3.1), counted up to just past ``limit``.

    Only replicate runs can expand the data (2 bytes to up to 128), so the limit is checked
    after those; a literal run never yields more bytes than it consumes.
    """
    pos, n, total, header = 0, len(segment), 0, 0
    while pos < n:
        header = segment[pos]
        if header < 128:  # literal run of header + 1 bytes
            total += header + 1
            pos += header + 2
        elif header > 128:  # the next byte repeated 257 - header times
            total += 257 - header
            pos += 2
            if total > limit:
                return total
        else:  # 128: no operation
            pos += 1
    if pos > n:  # the last run lacks bytes: the decoder yields only what is there
        total -= pos - n if header < 128 else 257 - header
    return total


def rle_segment_lengths(frame: bytes | memoryview, limit: int) -> list[int] | None:
    """Decoded length of each segment of one RLE Lossless frame; None if the table is invalid.

    Args:
        frame: the frame's bytes (header of 16 little-endian uint32 + segments).
        limit: each count stops just past this many bytes, so the scan costs no more than
            decoding and never allocates.

    Returns:
        One count per segment, in segment order.
    """
    view = memoryview(frame)
    if len(view) < 64:
        return None
    header = struct.unpack_from("<16I", view, 0)
    count = header[0]
    if not 1 <= count <= 15:
        return None
    offsets = [*header[1 : 1 + count], len(view)]
    if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:], strict=False)):
        return None
    pairs = zip(offsets, offsets[1:], strict=False)
    return [_rle_decoded_length(bytes(view[a:b]), limit) for a, b in pairs]


@dataclass(frozen=True)
class PngHeader:
    """The IHDR chunk of a PNG: size, bit depth, colour type (0 grey, 2 RGB, 3 palette,
    4 grey + alpha, 6 RGBA) and interlace method."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int

    @property
    def channels(self) -> int:
        return {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(self.colour_type, 0)


def png_header(data: bytes) -> PngHeader | None:
    """The IHDR chunk, which must come first (ISO/IEC 15948 5.6); None when it does not."""
    if not data.startswith(_PNG_SIGNATURE) or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        return None
    if len(data) < 29:
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    return PngHeader(width, height, depth, colour, interlace)


def png_critical_chunks(data: bytes) -> tuple[bytes, bool]:
    """The PNG rebuilt from its critical chunks only, and whether it ends before IEND.

    Ancillary chunks (ICC profiles, text, physical size...) do not change the stored samples;
    Pillow refuses some of them with a plain ValueError (an iCCP inflating past
    ``PngImagePlugin.MAX_TEXT_CHUNK``, a truncated pHYs), so a PNG whose pixels are intact can
    be decoded again without them. CRCs are kept as they were.
    """
    out = [data[:8]]
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length = struct.unpack_from(">I", data, pos)[0]
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if kind in _PNG_CRITICAL:
            out.append(data[pos:end])
        if kind == b"IEND":
            return b"".join(out), False
        if end > n:
            break
        pos = end
    return b"".join(out), True


def inflated_size(chunks: Iterable[bytes], limit: int) -> int:
    """Bytes a raw deflate stream (no zlib header, as in PS3.5 A.5) inflates to.

    The stream is fed in the given chunks, at most 16 times a chunk's length of output per step,
    keeping nothing; counting stops just past ``limit``.

    Raises:
        zlib.error: the stream is not valid deflate data.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    for chunk in chunks:
        pending: bytes = chunk
        step = max(len(chunk), 1 << 16) * 16
        while pending:
            total += len(inflater.decompress(pending, step))
            if total > limit:
                return total
            pending = inflater.unconsumed_tail
        if inflater.eof:
            break
    return total
