"""What an image file declares of itself before anything decodes it: its format, width,
height and frames, read from its first bytes.

    PNG   the IHDR chunk (width, height: big-endian uint32 at bytes 16 and 20)
    JPEG  the first SOFn segment, found by walking the segments as libjpeg does
    GIF   the logical screen, and every image descriptor (the decoder slurps all frames)
    BMP   the info header (OS/2 core header: uint16 sides; a negative height: top-down)
    WebP  the VP8 frame header, the VP8L header or the VP8X canvas

A decoder allocates what the header declares, so a 389 KB PNG that declares 20000x20000
pixels takes gigabytes once decoded (a decompression bomb); `tfmeta.data.images` reads
`read_header` first and refuses what declares too many pixels. Only bytes are read (the
file is data: no decoder, no code it names); the format is told by its magic bytes, as
`tf.io.decode_image` tells it, not by the file's name. A header that does not parse gives
None, and the decoder's own error then says what is wrong with the file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The JPEG markers whose segment is a frame header (SOF0..SOF15 but DHT, JPG and DAC).
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone (no length follows): TEM, RST0..RST7, SOI.
JPEG_BARE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])
JPEG_END_MARKERS = (0xD9, 0xDA)  # EOI, or SOS (scan data) before any frame header
WEBP_ANIMATION_FLAG = 0x02  # in the VP8X chunk's flags byte


@dataclasses.dataclass(frozen=True)
class Header:
    """What an image declares: `frames` images of `width` x `height` pixels each."""

    format: str
    width: int
    height: int
    frames: int = 1
    animated: bool = False  # an animated WebP (VP8X with the animation flag)

    @property
    def pixels(self) -> int:
        """The pixels a decoder allocates for it: every frame's."""
        return self.width * self.height * self.frames

    def describe(self) -> str:
        """"20000x20000", or "500x500 in 400 frames"."""
        frames = f" in {self.frames} frames" if self.frames > 1 else ""
        return f"{self.width}x{self.height}{frames}"


def read_header(source) -> Header | None:
    """The `Header` of an image file (a path) or of encoded bytes, or None when it is none
    of PNG, JPEG, GIF, BMP and WebP, is cut short, or is not a regular file (a missing
    file, a named pipe: never opened)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return parse_header(io.BytesIO(source))
    path = os.fspath(source)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as stream:
            return parse_header(stream)
    except OSError:
        return None  # unreadable: the decoder's read says so


def parse_header(stream) -> Header | None:
    """`read_header` of a binary stream positioned at the image's first byte."""
    head = stream.read(32)
    if head.startswith(PNG_SIGNATURE):
        return _png(head)
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg(stream)
    if head.startswith(b"GIF"):  # giflib checks these three bytes only
        return _gif(head, stream)
    if head.startswith(b"BM"):
        return _bmp(head)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp(head)
    return None


def _png(head: bytes) -> Header | None:
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return Header("PNG", width, height)


def _jpeg(stream) -> Header | None:
    """The first frame header's sides, the segments before it skipped by their lengths."""
    stream.seek(2)
    while True:
        marker = _next_jpeg_marker(stream)
        if marker is None or marker in JPEG_END_MARKERS:
            return None
        if marker in JPEG_BARE_MARKERS:
            continue
        if marker in JPEG_FRAME_MARKERS:
            frame = stream.read(7)  # length (2), precision (1), height (2), width (2)
            if len(frame) < 7:
                return None
            height, width = struct.unpack(">HH", frame[3:7])
            return Header("JPEG", width, height)
        length = stream.read(2)
        if len(length) < 2 or struct.unpack(">H", length)[0] < 2:
            return None
        stream.seek(struct.unpack(">H", length)[0] - 2, io.SEEK_CUR)


def _next_jpeg_marker(stream) -> int | None:
    """The next marker, as libjpeg's `next_marker` finds it: bytes up to an 0xFF are
    skipped (garbage), then fill 0xFFs; 0xFF 0x00 is not a marker."""
    while True:
        byte = stream.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            continue
        while byte == b"\xff":
            byte = stream.read(1)
        if not byte:
            return None
        if byte != b"\x00":
            return byte[0]


def _gif(head: bytes, stream) -> Header | None:
    """The logical screen, widened to any frame that reaches past it, times the frames:
    giflib reads every frame into memory before the first is returned."""
    if len(head) < 13:
        return None
    width, height = struct.unpack("<HH", head[6:10])
    stream.seek(13 + _gif_colour_table(head[10]))
    frames = 0
    while True:
        block = stream.read(1)
        if block == b",":  # an image descriptor: left, top, width, height, flags
            descriptor = stream.read(9)
            if len(descriptor) < 9:
                break
            left, top, frame_width, frame_height = struct.unpack("<HHHH", descriptor[:8])
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            frames += 1
            stream.seek(_gif_colour_table(descriptor[8]) + 1, io.SEEK_CUR)  # + LZW size
            _skip_gif_sub_blocks(stream)
        elif block == b"!":  # an extension: its label, then sub-blocks
            stream.seek(1, io.SEEK_CUR)
            _skip_gif_sub_blocks(stream)
        else:  # the trailer (";"), the end of the file, or damage: the frames so far
            break
    return Header("GIF", width, height, max(frames, 1))


def _gif_colour_table(flags: int) -> int:
    """Bytes of the colour table a GIF screen or image descriptor's flags announce."""
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _skip_gif_sub_blocks(stream) -> None:
    while True:
        size = stream.read(1)
        if not size or size == b"\x00":
            return
        stream.seek(size[0], io.SEEK_CUR)


def _bmp(head: bytes) -> Header | None:
    if len(head) < 26:
        return None
    (info_size,) = struct.unpack("<I", head[14:18])
    if info_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", head[18:22])
    elif info_size >= 16:
        width, height = struct.unpack("<ii", head[18:26])
    else:
        return None
    return Header("BMP", abs(width), abs(height))


def _webp(head: bytes) -> Header | None:
    if len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # a key frame's start code
        width, height = struct.unpack("<HH", head[26:30])
        return Header("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and head[20] == 0x2F:
        (bits,) = struct.unpack("<I", head[21:25])
        return Header("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return Header("WebP", width, height, animated=bool(head[20] & WEBP_ANIMATION_FLAG))
    return None
