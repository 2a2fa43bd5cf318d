"""Read one file whole without ever blocking, reading without bound or opening a special file.

Captures and their JSON documents come from outside: a FIFO where a file belongs
would make ``open()`` wait forever, a device or a 1 GB file would be read whole. Both
readers of raw input (``image_check.read_capture_file`` and
``json_file.read_json_file``) go through ``read_bounded``, which refuses such
files before reading a byte and says what they are; each caller words the refusal
for its own users.
"""

from __future__ import annotations

import errno
import os
import stat

#: What a file that is not a regular file is, as a message names it.
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
)
SYMLINK = "a symbolic link"


def file_kind(mode: int) -> str | None:
    """``"a FIFO (named pipe)"``, ``"a directory"``, ... for a mode that is not a regular file; None for one."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "a special file")


class RefusedFile(Exception):
    """The file was not read: ``kind`` says what it is when not a regular file, ``size`` and
    ``limit`` are set when it is too large, ``reason`` is the operating system's otherwise."""

    def __init__(self, reason: str, *, kind: str | None = None, size: int | None = None,
                 limit: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.kind, self.size, self.limit = reason, kind, size, limit


def read_bounded(path: str | os.PathLike[str], max_bytes: int, *, follow_symlinks: bool) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, else ``RefusedFile``.

    Opened non-blocking (a FIFO is refused, not waited on) and checked with ``fstat``
    before any read; without ``follow_symlinks`` a link is refused (``lstat`` first, so
    kinds refused anyway are never opened, then ``O_NOFOLLOW`` for a link swapped in
    after it). A file that grows past the limit while being read is refused too.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        if not follow_symlinks:
            kind = file_kind(os.lstat(path).st_mode)
            if kind:
                raise RefusedFile(f"the file is {kind}", kind=kind)
            flags |= getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise RefusedFile(f"the file is {SYMLINK}", kind=SYMLINK) from None
        raise RefusedFile(f"cannot open the file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        kind = file_kind(st.st_mode)  # swapped after the lstat: still refused, still unread
        if kind:
            raise RefusedFile(f"the file is {kind}", kind=kind)
        if st.st_size > max_bytes:
            raise RefusedFile(f"the file is {st.st_size:,} bytes", size=st.st_size, limit=max_bytes)
        chunks, total = [], 0
        while True:  # at most max_bytes + 1: one byte more shows that it grew since fstat
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise RefusedFile("the file grew while being read", size=total, limit=max_bytes)
    except OSError as exc:
        raise RefusedFile(f"cannot read the file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
