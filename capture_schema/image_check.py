"""Cheap structural checks of JPEG and PNG bytes, and an optional full decode.

Ingest must keep pace with reading and hashing terabytes of captures, so the
default check walks the container structure without decoding pixels:

* PNG: signature, every chunk's length and CRC-32 (so any flipped byte is
  caught), IHDR first, IDAT present, IEND last with nothing after it.
* JPEG: SOI, every marker segment's length up to the first scan, a frame header
  (SOF) giving the size, and EOI as the last marker (so truncation is caught).
  Scanning the entropy-coded data byte by byte would cost as much as hashing it
  and still miss most damage: JPEG has no checksum, so a flipped bit inside the
  compressed data is only found by decoding (``deep=True``), and often not even then.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageCorrupt(ValueError):
    """The bytes are not a complete, well-formed JPEG or PNG."""


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "jpeg" or "png"
    width: int
    height: int


def _check_png(data: bytes) -> ImageHeader:
    pos, size, width, height = len(PNG_SIGNATURE), len(data), 0, 0
    seen_idat = False
    first = True
    while True:
        if pos + 12 > size:
            raise ImageCorrupt("PNG is truncated (chunk header past the end of the file)")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > size:
            raise ImageCorrupt(f"PNG is truncated inside chunk {ctype!r}")
        body = data[pos + 4 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(body) != crc:
            raise ImageCorrupt(f"PNG chunk {ctype!r} fails its CRC check (corrupt bytes)")
        if first:
            if ctype != b"IHDR" or length != 13:
                raise ImageCorrupt("PNG does not start with an IHDR chunk")
            width, height = struct.unpack_from(">II", data, pos + 8)
            first = False
        seen_idat |= ctype == b"IDAT"
        pos = end
        if ctype == b"IEND":
            break
    if not seen_idat:
        raise ImageCorrupt("PNG has no image data (IDAT)")
    if data[pos:].strip(b"\x00"):
        raise ImageCorrupt("PNG has trailing bytes after IEND")
    if width == 0 or height == 0:
        raise ImageCorrupt("PNG declares an empty image")
    return ImageHeader("png", width, height)


def _check_jpeg(data: bytes) -> ImageHeader:
    pos, size = 2, len(data)
    width = height = 0
    while True:
        while pos + 1 < size and data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 4 > size:
            raise ImageCorrupt("JPEG is truncated before its first scan")
        if data[pos] != 0xFF:
            raise ImageCorrupt(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xD9:
            raise ImageCorrupt("JPEG ends before any image data")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > size:
            raise ImageCorrupt(f"JPEG segment 0x{marker:02X} runs past the end of the file")
        if marker in _JPEG_SOF:
            if length < 8:
                raise ImageCorrupt("JPEG frame header is too short")
            height, width = struct.unpack_from(">HH", data, pos + 5)
        if marker == 0xDA:  # start of scan: the headers are done
            break
        pos += 2 + length
    if width == 0 or height == 0:
        raise ImageCorrupt("JPEG has no frame header with a size before its scan")
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageCorrupt("JPEG is truncated (no end-of-image marker at the end)")
    return ImageHeader("jpeg", width, height)


def check_image_bytes(data: bytes, deep: bool = False) -> ImageHeader:
    """Return the format and size of a JPEG or PNG, or raise ``ImageCorrupt`` saying why."""
    if data.startswith(PNG_SIGNATURE):
        header = _check_png(data)
    elif data.startswith(b"\xff\xd8"):
        header = _check_jpeg(data)
    elif not data:
        raise ImageCorrupt("the file is empty")
    else:
        raise ImageCorrupt("not a JPEG or PNG (unknown file signature)")
    if deep:
        _decode_fully(data, header)
    return header


def _decode_fully(data: bytes, header: ImageHeader) -> None:
    from PIL import Image  # decoded only on request: ~20x the cost of hashing

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.size != (header.width, header.height):
                raise ImageCorrupt("decoded size differs from the header")
    except ImageCorrupt:
        raise
    except Exception as exc:  # PIL raises many types for broken data
        raise ImageCorrupt(f"image does not decode: {exc}") from None


EXTENSION_FORMATS = {".jpg": "jpeg", ".png": "png"}
