"""Hostile raw image files are refused cheaply and clearly, never hang, never blow up memory."""

from __future__ import annotations

import os
import struct
import threading
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from capture_schema import image_check
from capture_schema.board import ChessboardSpec
from capture_schema.image_check import (
    TRAILING_SLACK_BYTES,
    ImageCorrupt,
    ImageLimits,
    check_image_bytes,
    read_capture_file,
)
from fitting.calibration.detect import detect_folder
from fitting.image_io import ImageReadError, read_image
from fitting.landmarks.detect import LandmarkInputError, detect_image_file, read_image_rgb

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX file types needed")


# --- hand-built test images (never made by the code under test) --------------------------

def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png(width: int, height: int, raw: bytes, color: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _bomb_png() -> bytes:
    """100 bytes claiming 20000 x 20000 RGB: a tiny IDAT, valid CRCs, IEND."""
    return _png(20000, 20000, b"\x00" * 64)


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    img = np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def png() -> bytes:
    img = np.random.default_rng(1).integers(0, 256, (60, 80, 3), np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def _in_thread(fn, timeout: float = 10.0):
    """Run ``fn`` in a daemon thread; fail (rather than hang the suite) if it does not return."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return thread, result


# --- read_capture_file --------------------------------------------------------------------

def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "mid_C00.jpg"
    os.mkfifo(fifo)
    thread, result = _in_thread(lambda: read_capture_file(fifo))
    if thread.is_alive():  # unblock the reader so the thread can end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert isinstance(result.get("error"), ImageCorrupt), result
    assert "FIFO (named pipe), not an image file" in str(result["error"])


def test_fifo_met_only_by_fstat_is_refused_without_blocking(tmp_path: Path, monkeypatch) -> None:
    """If a FIFO replaces a file between lstat and open, O_NONBLOCK + fstat still refuse it."""
    fifo = tmp_path / "mid_C00.jpg"
    os.mkfifo(fifo)
    regular = os.stat(__file__)
    monkeypatch.setattr(image_check.os, "lstat", lambda path: regular)
    thread, result = _in_thread(lambda: read_capture_file(fifo))
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("opening a FIFO blocked: O_NONBLOCK missing")
    assert isinstance(result.get("error"), ImageCorrupt), result
    assert "FIFO" in str(result["error"])


@pytest.mark.parametrize("follow_in_lstat", [False, True], ids=["lstat", "O_NOFOLLOW"])
def test_symlink_is_refused(tmp_path: Path, jpeg: bytes, monkeypatch, follow_in_lstat: bool) -> None:
    target = tmp_path / "real.jpg"
    target.write_bytes(jpeg)
    link = tmp_path / "mid_C00.jpg"
    link.symlink_to(target)
    if follow_in_lstat:  # a link swapped in after the lstat: O_NOFOLLOW must catch it
        monkeypatch.setattr(image_check.os, "lstat", os.stat)
    with pytest.raises(ImageCorrupt, match="symbolic link"):
        read_capture_file(link)
    assert read_capture_file(target) == jpeg


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageCorrupt, match="is a directory, not an image file"):
        read_capture_file(tmp_path)


def test_missing_and_unreadable_files_become_image_corrupt(tmp_path: Path, jpeg: bytes) -> None:
    with pytest.raises(ImageCorrupt, match="No such file"):
        read_capture_file(tmp_path / "absent.jpg")
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(jpeg)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(ImageCorrupt, match="Permission denied"):
            read_capture_file(locked)
    finally:
        locked.chmod(0o600)


def test_oversized_file_is_refused_before_reading(tmp_path: Path, monkeypatch) -> None:
    big = tmp_path / "mid_C00.jpg"
    with open(big, "wb") as fh:
        fh.write(b"\xff\xd8")
        fh.truncate(300 * 1024 * 1024)  # sparse: costs no disk, 300 MiB > the 256 MiB default
    tracemalloc.start()
    try:
        with pytest.raises(ImageCorrupt, match=r"314,572,800 bytes, over the 268,435,456-byte limit.*O2A_MAX_IMAGE_BYTES"):
            read_capture_file(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024

    small = tmp_path / "small.jpg"
    small.write_bytes(b"\xff\xd8" + bytes(2000))

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was opened for reading")

    monkeypatch.setattr(image_check.os, "fdopen", no_reading)
    with pytest.raises(ImageCorrupt, match="2,002 bytes, over the 1,000-byte limit"):
        read_capture_file(small, ImageLimits(max_bytes=1000))


def test_limits_from_env(monkeypatch) -> None:
    monkeypatch.delenv("O2A_MAX_IMAGE_BYTES", raising=False)
    monkeypatch.delenv("O2A_MAX_IMAGE_PIXELS", raising=False)
    assert ImageLimits.from_env() == ImageLimits() == ImageLimits(256 * 1024 * 1024, 100_000_000)
    monkeypatch.setenv("O2A_MAX_IMAGE_BYTES", "1048576")
    monkeypatch.setenv("O2A_MAX_IMAGE_PIXELS", " 5000 ")
    assert ImageLimits.from_env() == ImageLimits(max_bytes=1048576, max_pixels=5000)
    monkeypatch.setenv("O2A_MAX_IMAGE_PIXELS", "")
    assert ImageLimits.from_env() == ImageLimits(max_bytes=1048576)
    for bad in ("lots", "0", "-3", "1.5e6"):
        monkeypatch.setenv("O2A_MAX_IMAGE_BYTES", bad)
        with pytest.raises(ValueError, match="O2A_MAX_IMAGE_BYTES"):
            ImageLimits.from_env()
    monkeypatch.setenv("O2A_MAX_IMAGE_BYTES", "1000")
    monkeypatch.setenv("O2A_MAX_IMAGE_PIXELS", "ten")
    with pytest.raises(ValueError, match="O2A_MAX_IMAGE_PIXELS"):
        ImageLimits.from_env()
    with pytest.raises(ValueError, match="max_pixels"):
        ImageLimits(max_pixels=0)


def test_env_limits_apply_by_default(monkeypatch, jpeg: bytes) -> None:
    monkeypatch.setenv("O2A_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageCorrupt, match=r"160x120 = 19,200 pixels, over the 1,000-pixel limit"):
        check_image_bytes(jpeg)
    monkeypatch.setenv("O2A_MAX_IMAGE_PIXELS", "19200")
    assert check_image_bytes(jpeg).width == 160


# --- pixel limit ----------------------------------------------------------------------------

def test_header_only_png_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = _bomb_png()
    assert len(bomb) < 200
    with pytest.raises(ImageCorrupt, match=r"20000x20000 = 400,000,000 pixels.*100,000,000-pixel limit.*O2A_MAX_IMAGE_PIXELS"):
        check_image_bytes(bomb)
    # structurally it is a fine PNG: only the limit refuses it
    assert check_image_bytes(bomb, limits=ImageLimits(max_pixels=400_000_000)).width == 20000

    path = tmp_path / "mid_C00.png"
    path.write_bytes(bomb)
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match="pixel limit") as info:
            read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.path == str(path) and str(info.value).startswith(str(path))
    assert isinstance(info.value, ImageCorrupt) and isinstance(info.value, ValueError)
    assert peak < 10 * 1024 * 1024


def test_jpeg_frame_header_over_the_pixel_limit_is_refused(jpeg: bytes) -> None:
    sof = jpeg.index(b"\xff\xc0")
    huge = jpeg[: sof + 5] + struct.pack(">HH", 20000, 20000) + jpeg[sof + 9 :]
    with pytest.raises(ImageCorrupt, match="JPEG declares 20000x20000"):
        check_image_bytes(huge)


# --- trailing bytes -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_trailing_padding_small_is_accepted_large_is_refused(fmt: str, jpeg: bytes, png: bytes) -> None:
    data = jpeg if fmt == "jpeg" else png
    assert check_image_bytes(data + bytes(100), deep=True).format == fmt
    assert check_image_bytes(data + b"\x55" * TRAILING_SLACK_BYTES).format == fmt
    with pytest.raises(ImageCorrupt, match=f"{TRAILING_SLACK_BYTES + 1:,} trailing bytes"):
        check_image_bytes(data + b"\x55" * (TRAILING_SLACK_BYTES + 1))
    with pytest.raises(ImageCorrupt, match="1,048,576 trailing bytes"):
        check_image_bytes(data + bytes(1024 * 1024))


def test_zero_padded_file_on_disk_is_refused(tmp_path: Path, jpeg: bytes) -> None:
    path = tmp_path / "mid_C00.jpg"
    path.write_bytes(jpeg + bytes(1024 * 1024))
    with pytest.raises(ImageReadError, match="trailing bytes"):
        read_image(path)


# --- truncation -----------------------------------------------------------------------------

def test_truncated_jpeg_with_eoi_reappended_fails_the_deep_check(jpeg: bytes) -> None:
    cut = jpeg[: len(jpeg) // 2] + b"\xff\xd9"
    assert check_image_bytes(cut).format == "jpeg"  # the structure cannot see it
    with pytest.raises(ImageCorrupt, match="does not decode.*premature end of data segment"):
        check_image_bytes(cut, deep=True)
    assert check_image_bytes(jpeg, deep=True).format == "jpeg"


def test_jpeg_corrupted_inside_its_scan_fails_only_the_deep_check(jpeg: bytes) -> None:
    """Sixteen bytes of the entropy-coded data overwritten, length and markers intact: the structure
    cannot see it, OpenCV decodes it with a warning, libjpeg-turbo in strict mode refuses it."""
    sos = jpeg.index(b"\xff\xda")
    scan_start = sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")
    middle = (scan_start + len(jpeg) - 2) // 2
    garbage = np.random.default_rng(0).integers(0, 255, 16, dtype=np.uint8).tobytes()  # no 0xFF: no new marker
    broken = jpeg[:middle] + garbage + jpeg[middle + 16 :]
    assert len(broken) == len(jpeg) and broken != jpeg
    assert check_image_bytes(broken).format == "jpeg"
    assert cv2.imdecode(np.frombuffer(broken, np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(ImageCorrupt, match="does not decode.*Corrupt JPEG data"):
        check_image_bytes(broken, deep=True)


def test_truncated_jpeg_without_eoi_is_refused(jpeg: bytes) -> None:
    with pytest.raises(ImageCorrupt, match="truncated"):
        check_image_bytes(jpeg[: len(jpeg) // 2])


def test_truncated_png_is_refused(png: bytes) -> None:
    with pytest.raises(ImageCorrupt, match="truncated"):
        check_image_bytes(png[: len(png) // 2])
    # cut inside the zlib stream but re-wrapped with valid CRCs and IEND: PIL catches it
    idat = png.index(b"IDAT")
    (length,) = struct.unpack_from(">I", png, idat - 4)
    stream = png[idat + 4 : idat + 4 + length]
    rewrapped = png[: idat - 4] + _chunk(b"IDAT", stream[: len(stream) // 2]) + _chunk(b"IEND", b"")
    assert check_image_bytes(rewrapped).format == "png"
    with pytest.raises(ImageCorrupt, match="truncated|does not decode"):
        check_image_bytes(rewrapped, deep=True)


def test_png_with_a_complete_but_short_stream_fails_the_deep_check() -> None:
    """PIL decodes this silently (missing rows become black); the inflated-size check does not."""
    width, height = 40, 30
    pixels = np.random.default_rng(2).integers(0, 256, (height, width * 3), np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per row
    assert check_image_bytes(_png(width, height, rows), deep=True).height == height
    short = _png(width, height, rows[: len(rows) // 2])
    assert check_image_bytes(short).format == "png"
    with pytest.raises(ImageCorrupt, match="PNG image data is short"):
        check_image_bytes(short, deep=True)


# --- callers: landmarks and board detection -------------------------------------------------

def test_landmarks_reading_a_refused_image_raises_its_input_error(tmp_path: Path) -> None:
    bomb = tmp_path / "mid_C00.png"
    bomb.write_bytes(_bomb_png())
    with pytest.raises(LandmarkInputError, match="cannot decode the file as an image.*pixel limit") as info:
        detect_image_file(bomb)
    assert str(bomb) in str(info.value)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    thread, result = _in_thread(lambda: read_image_rgb(fifo))
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("landmarks blocked on a FIFO")
    assert isinstance(result.get("error"), LandmarkInputError) and "FIFO" in str(result["error"])
    with pytest.raises(LandmarkInputError, match="not found"):
        read_image_rgb(tmp_path / "absent.jpg")


def test_board_detection_skips_refused_images_with_a_reason(tmp_path: Path, jpeg: bytes) -> None:
    cam = tmp_path / "cam0"
    cam.mkdir()
    (cam / "001.jpg").write_bytes(jpeg)
    (cam / "002.png").write_bytes(_bomb_png())
    (cam / "003.jpg").write_bytes(jpeg + bytes(1024 * 1024))
    (cam / "004.jpg").symlink_to(cam / "001.jpg")
    result = detect_folder(tmp_path, ["cam0"], spec=ChessboardSpec(cols=7, rows=5, square_length_m=0.03), workers=1)
    det = result.cameras["cam0"]
    assert det.image_size == (160, 120)
    assert det.skipped["001.jpg"] == "no board"
    assert det.skipped["002.png"].startswith("unreadable (") and "pixel limit" in det.skipped["002.png"]
    assert det.skipped["003.jpg"].startswith("unreadable (") and "trailing bytes" in det.skipped["003.jpg"]
    assert det.skipped["004.jpg"].startswith("unreadable (") and "symbolic link" in det.skipped["004.jpg"]
    assert det.n_unreadable == 3
