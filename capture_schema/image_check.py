"""Cheap structural checks of JPEG and PNG bytes, and an optional full decode.

Ingest must keep pace with reading and hashing terabytes of captures, so the
default check walks the container structure without decoding pixels:

* PNG: signature, every chunk's length and CRC-32 (so any flipped byte is
  caught), IHDR first, IDAT present, IEND last (at most ``TRAILING_SLACK_BYTES`` after it).
* JPEG: SOI, every marker segment's length up to the first scan, a frame header
  (SOF) giving the size, and EOI as the last marker (so truncation is caught).
  Scanning the entropy-coded data byte by byte would cost as much as hashing it
  and still miss most damage: JPEG has no checksum, so a flipped bit inside the
  compressed data is only found by decoding (``deep=True``), and often not even then.

Raw captures come from outside and may be hostile, so they are read with
``read_capture_file``: it opens without following a symlink and without blocking
(a FIFO in an image cell would otherwise hang ``open()`` forever), refuses anything
that is not a regular file before reading a byte, and refuses files over
``ImageLimits.max_bytes`` before reading them. ``check_image_bytes`` refuses a
header declaring more than ``ImageLimits.max_pixels`` pixels before anything is
decoded (a 100-byte PNG may claim 20000 x 20000 px and cost gigabytes to decode),
and refuses more than ``TRAILING_SLACK_BYTES`` after the end-of-image marker. Both
limits can be raised with the environment variables ``O2A_MAX_IMAGE_BYTES`` and
``O2A_MAX_IMAGE_PIXELS``.

``deep=True`` decodes JPEG with libjpeg-turbo through ``simplejpeg`` in strict mode:
PIL silently decodes a JPEG whose scan was cut short and an end-of-image marker
re-appended (it pads the missing data), libjpeg-turbo strict reports "premature end
of data segment". PNG is decoded with PIL, after checking that the zlib stream of
the IDAT chunks is complete and inflates to all the bytes the header declares:
PIL catches a cut-off zlib stream but silently accepts a complete stream that holds
too few rows.

Messages never name the file: the caller knows the path and adds it.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass

from capture_schema.safe_read import SYMLINK, RefusedFile, read_bounded

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


#: Bytes of anything allowed after the JPEG end-of-image marker / the PNG IEND chunk.
#: Some cameras and firmware pad files (to a sector or block size, or with a few bytes
#: of vendor trailer); 4 KiB covers one page/sector of padding. More than that is
#: either a second payload glued on or a file padded to exhaust storage and memory.
TRAILING_SLACK_BYTES = 4096

ENV_MAX_IMAGE_BYTES = "O2A_MAX_IMAGE_BYTES"
ENV_MAX_IMAGE_PIXELS = "O2A_MAX_IMAGE_PIXELS"


class ImageCorrupt(ValueError):
    """The bytes are not a complete, well-formed JPEG or PNG (or the file is not a readable image file)."""


@dataclass(frozen=True)
class ImageLimits:
    """What a raw capture image may cost before it is read or decoded."""

    # 256 MiB: the largest legitimate capture is a 16-bit 8K PNG, ~200 MB; a
    # 2048 x 1536 capture JPEG is 1-3 MB. Anything bigger is not a camera image.
    max_bytes: int = 256 * 1024 * 1024
    # 100 MP: medium-format sensors reach 100 MP (8K video frames are 33 MP). A
    # decode costs 3-8 bytes per pixel, so this bounds one decode to ~0.3-0.8 GB.
    max_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageLimits.{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_env(cls) -> ImageLimits:
        """Defaults, overridden by ``O2A_MAX_IMAGE_BYTES`` / ``O2A_MAX_IMAGE_PIXELS`` when set.

        An unset or empty variable keeps the default; anything but a positive integer
        raises ``ValueError`` naming the variable.
        """
        values = {}
        for name, var in (("max_bytes", ENV_MAX_IMAGE_BYTES), ("max_pixels", ENV_MAX_IMAGE_PIXELS)):
            raw = os.environ.get(var, "").strip()
            if not raw:
                continue
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value < 1:
                raise ValueError(f"environment variable {var}={raw!r} is not a positive integer; "
                                 f"set it to a number of {'bytes' if name == 'max_bytes' else 'pixels'} or unset it")
            values[name] = value
        return cls(**values)


def read_capture_file(path: str | os.PathLike[str], limits: ImageLimits | None = None) -> bytes:
    """The bytes of one raw capture file, or ``ImageCorrupt`` saying why it is refused.

    Never blocks (a FIFO is refused, not waited on), never follows a symlink, reads
    nothing from a FIFO, socket, device or directory, and refuses a file over
    ``limits.max_bytes`` before reading it (``safe_read.read_bounded``).
    ``limits=None`` means ``ImageLimits.from_env()``. OS errors (permission denied,
    ...) become ``ImageCorrupt`` with the system's reason.
    """
    limits = ImageLimits.from_env() if limits is None else limits
    try:
        return read_bounded(path, limits.max_bytes, follow_symlinks=False)
    except RefusedFile as exc:
        if exc.kind == SYMLINK:
            reason = "the file is a symbolic link; links are not followed when reading captures, copy the image in instead"
        elif exc.kind:
            reason = f"the file is {exc.kind}, not an image file; replace it with the image file"
        elif exc.limit is not None:
            reason = (f"{exc.reason}, over the {exc.limit:,}-byte limit for one image "
                      f"(set {ENV_MAX_IMAGE_BYTES} to raise it)")
        else:
            reason = exc.reason
        raise ImageCorrupt(reason) from None


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "jpeg" or "png"
    width: int
    height: int


def _check_pixels(fmt: str, width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageCorrupt(f"{fmt} declares {width}x{height} = {width * height:,} pixels, over the "
                           f"{limits.max_pixels:,}-pixel limit for one image (set {ENV_MAX_IMAGE_PIXELS} to raise it)")


def _check_trailing(fmt: str, end_marker: str, trailing: int) -> None:
    if trailing > TRAILING_SLACK_BYTES:
        raise ImageCorrupt(f"{fmt} has {trailing:,} trailing bytes after its {end_marker} "
                           f"(at most {TRAILING_SLACK_BYTES:,} bytes of padding are allowed)")


def _check_png(data: bytes, limits: ImageLimits) -> ImageHeader:
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
            _check_pixels("PNG", width, height, limits)
            first = False
        seen_idat |= ctype == b"IDAT"
        pos = end
        if ctype == b"IEND":
            break
    if not seen_idat:
        raise ImageCorrupt("PNG has no image data (IDAT)")
    _check_trailing("PNG", "IEND chunk", size - pos)
    if width == 0 or height == 0:
        raise ImageCorrupt("PNG declares an empty image")
    return ImageHeader("png", width, height)


def _check_jpeg(data: bytes, limits: ImageLimits) -> ImageHeader:
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
            _check_pixels("JPEG", width, height, limits)
        if marker == 0xDA:  # start of scan: the headers are done
            break
        pos += 2 + length
    if width == 0 or height == 0:
        raise ImageCorrupt("JPEG has no frame header with a size before its scan")
    # FF D9 cannot occur inside entropy-coded data (an FF there is followed by 00 or
    # a restart marker), so the last one after the scan start is the end of the image.
    eoi = data.rfind(b"\xff\xd9", pos)
    if eoi < 0:
        raise ImageCorrupt("JPEG is truncated (no end-of-image marker at the end)")
    _check_trailing("JPEG", "end-of-image marker", size - eoi - 2)
    return ImageHeader("jpeg", width, height)


def check_image_bytes(data: bytes, deep: bool = False, limits: ImageLimits | None = None) -> ImageHeader:
    """Return the format and size of a JPEG or PNG, or raise ``ImageCorrupt`` saying why.

    ``limits`` (default ``ImageLimits.from_env()``): more than ``max_bytes`` bytes, or a
    header declaring more than ``max_pixels`` pixels, is refused before any decode.
    """
    limits = ImageLimits.from_env() if limits is None else limits
    if len(data) > limits.max_bytes:
        raise ImageCorrupt(f"the image is {len(data):,} bytes, over the {limits.max_bytes:,}-byte limit for one "
                           f"image (set {ENV_MAX_IMAGE_BYTES} to raise it)")
    if data.startswith(PNG_SIGNATURE):
        header = _check_png(data, limits)
    elif data.startswith(b"\xff\xd8"):
        header = _check_jpeg(data, limits)
    elif not data:
        raise ImageCorrupt("the file is empty")
    else:
        raise ImageCorrupt("not a JPEG or PNG (unknown file signature)")
    if deep:
        _decode_fully(data, header)
    return header


def _decode_fully(data: bytes, header: ImageHeader) -> None:
    if header.format == "jpeg":
        _decode_jpeg(data, header)
        return
    _check_png_image_data(data)
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


def _decode_jpeg(data: bytes, header: ImageHeader) -> None:
    import simplejpeg  # libjpeg-turbo; strict: recoverable errors such as a cut-short scan raise

    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        target = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}.get(colorspace, "RGB")
        image = simplejpeg.decode_jpeg(data, colorspace=target, strict=True)
    except Exception as exc:  # ValueError for broken data, others for unsupported variants
        raise ImageCorrupt(f"image does not decode: {exc}") from None
    if image.shape[:2] != (header.height, header.width):
        raise ImageCorrupt("decoded size differs from the header")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_png_image_data(data: bytes) -> None:
    """The IDAT zlib stream is complete and inflates to the bytes IHDR implies (PIL misses a short stream).

    Inflates in bounded pieces and keeps nothing, so a zlib bomb costs time, not memory.
    """
    width, height, depth, color, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if color not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise ImageCorrupt(f"PNG declares an invalid colour type {color} / bit depth {depth}")
    bits = _PNG_CHANNELS[color] * depth

    def raw_size(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w and h else 0

    if interlace:
        expected = sum(raw_size((width - x0 + dx - 1) // dx if width > x0 else 0,
                                (height - y0 + dy - 1) // dy if height > y0 else 0)
                       for x0, y0, dx, dy in _ADAM7)
    else:
        expected = raw_size(width, height)
    inflater, produced, pos, piece, view = zlib.decompressobj(), 0, len(PNG_SIGNATURE), 1 << 20, memoryview(data)
    try:
        while True:
            length, ctype = struct.unpack_from(">I4s", data, pos)
            if ctype == b"IEND":
                break
            if ctype == b"IDAT" and not inflater.eof and produced <= expected:
                pending = view[pos + 8 : pos + 8 + length]
                while True:  # a full piece with no input left may still hold output: go round once more
                    out = len(inflater.decompress(pending, piece))
                    produced, pending = produced + out, inflater.unconsumed_tail
                    if inflater.eof or produced > expected or (not pending and out < piece):
                        break
            pos += 12 + length
    except zlib.error as exc:
        raise ImageCorrupt(f"PNG image data does not decompress: {exc}") from None
    if produced < expected and not inflater.eof:
        raise ImageCorrupt(f"PNG image data is truncated (its zlib stream stops after {produced:,} of "
                           f"{expected:,} bytes)")
    if produced < expected:
        raise ImageCorrupt(f"PNG image data is short: {produced:,} of the {expected:,} bytes its header declares")


EXTENSION_FORMATS = {".jpg": "jpeg", ".png": "png"}
