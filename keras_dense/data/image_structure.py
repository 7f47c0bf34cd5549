"""Whether encoded JPEG and PNG bytes are whole, read from their structure, not their pixels.

- PNG: the chunks are walked from the signature to `IEND`. Each critical chunk (`IHDR`,
  `IDAT`, ...) must carry its CRC-32: decoders (libpng, so TensorFlow and OpenCV) refuse a
  critical chunk whose CRC fails, and skip an ancillary one (`tEXt`, ...), which is accepted.
- JPEG: the marker segments are walked from `SOI`, over each scan's entropy-coded data, to
  the first `EOI`.

Bytes after `IEND` or that `EOI` (zero padding, a phone's motion-photo video) are ignored, as
the decoders ignore them. One pass over the bytes; no pixel is decoded.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import NamedTuple

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# In a scan's entropy-coded data 0xFF is followed by 0x00 (a stuffed byte), a restart marker
# (D0..D7) or another 0xFF (fill); anything else is the marker that ends the scan.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Markers without a length field: TEM, RST0..7 (SOI and EOI are handled apart).
_STANDALONE = frozenset({0x00, 0x01, *range(0xD0, 0xD8)})
_SOS, _EOI = 0xDA, 0xD9


class PngHeader(NamedTuple):
    """The `IHDR` fields that decide how a PNG decodes."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int


def png_header(data: bytes) -> PngHeader | None:
    """The `IHDR` of PNG bytes, or None when they do not start with a PNG header."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 29 or data[12:16] != b"IHDR":
        return None
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return PngHeader(width, height, bit_depth, colour_type, interlace)


def _png_problem(data: bytes) -> str | None:
    if len(data) >= 16 and data[12:16] != b"IHDR":
        return f"corrupt PNG (its first chunk is {data[12:16].decode('latin-1')!r}, not 'IHDR')"
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = bytes(view[pos + 4 : pos + 8])
        name = kind.decode("latin-1")
        end = pos + 8 + length
        if end + 4 > len(data):
            return f"truncated PNG: the data ends inside chunk {name!r} (the IEND chunk is missing)"
        critical = not kind[0] & 0x20
        if critical and zlib.crc32(view[pos + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            return f"corrupt PNG (chunk {name!r} at byte {pos} fails its CRC check)"
        if kind == b"IEND":
            return None
        pos = end + 4
    return "truncated PNG: the IEND chunk is missing"


def png_image_data(data: bytes) -> bytes:
    """The concatenated `IDAT` payloads of PNG bytes (whose structure was checked)."""
    parts = []
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            parts.append(data[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    return b"".join(parts)


def jpeg_end(data: bytes) -> int | None:
    """The offset just past the `EOI` that ends the JPEG starting at byte 0, or None.

    Bytes that are not a marker where one is due are skipped, as libjpeg skips them (with a
    warning); a scan's entropy-coded data runs to the next marker that is not a restart.
    """
    size = len(data)
    pos = len(JPEG_SOI)
    while True:
        pos = data.find(b"\xff", pos)
        while 0 <= pos < size and data[pos] == 0xFF:
            pos += 1
        if pos < 0 or pos >= size:
            return None
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            return pos
        if marker in _STANDALONE:
            continue
        if pos + 2 > size:
            return None
        pos += int.from_bytes(data[pos : pos + 2], "big")
        if marker == _SOS:
            scan_end = _SCAN_END.search(data, pos)
            if scan_end is None:
                return None
            pos = scan_end.start()


def structure_problem(data: bytes, fmt: str | None) -> str | None:
    """Why JPEG or PNG bytes are not whole, or None (and None for other formats).

    Args:
        data: The encoded bytes.
        fmt: `"jpeg"` or `"png"` (`image_io.sniff_format`).

    Returns:
        E.g. `"truncated JPEG: the end-of-image marker is missing"` or `"corrupt PNG (chunk
        'IDAT' at byte 71 fails its CRC check)"`.
    """
    if fmt == "png":
        return _png_problem(data)
    if fmt != "jpeg" or jpeg_end(data) is not None:
        return None
    marker = data.rfind(b"\xff\xd9")
    if marker > data.rfind(b"\xff\xda"):  # an end marker after the last scan: damaged inside
        return (
            "corrupt JPEG: its segments do not lead to the end-of-image marker at byte "
            f"{marker} (bytes in the compressed data are damaged)"
        )
    return "truncated JPEG: the end-of-image marker is missing"
