"""Turn an ``OSError`` that escapes a command into one line naming the file and the reason.

A full disk, a file-size limit, a read-only or unwritable output must read
``o2a <command>: cannot write <path>: <strerror>``, never a traceback; a failed
``write()`` on an open file carries no name, so the output file is recovered from
the failing frame, and atomic-write temporary names are mapped back to the final one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

#: Exit statuses of every ``o2a`` command: done, refused or failed on the input, wrong usage.
EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


#: A temporary name of ``capture_schema.atomic``: ``.<final name>.<8 random chars>.tmp``.
_TEMP_NAME = r"^\.(?P<final>.+)\.[a-z0-9_]{8}\.tmp$"


def command_name(args: argparse.Namespace) -> str:
    """``calibrate``, ``prior train``, ``pipeline run``, ...: what the user typed, for messages."""
    sub = next((getattr(args, k) for k in ("prior_command", "pipeline_command", "ablation_command")
                if getattr(args, k, None)), None)
    return f"{args.command} {sub}" if sub else str(args.command)


def _output_roots(args: argparse.Namespace) -> list[Path]:
    """The places this command writes to (``--out``, a local ``--storage``, ``--dagster-home``)."""
    roots = []
    for name in ("out", "storage", "dagster_home"):
        value = getattr(args, name, None)
        if not value or ("://" in str(value) and not str(value).startswith("file://")):
            continue
        roots.append(Path(str(value).removeprefix("file://")).absolute())
    return roots


def _user_path(filename: object) -> str:
    """``filename`` with atomic-write temporary names mapped back to the final names the user asked for."""
    import re

    parts = [m.group("final") if (m := re.match(_TEMP_NAME, part)) else part
             for part in Path(os.fsdecode(filename)).parts]
    return str(Path(*parts)) if parts else os.fsdecode(filename)


def _failed_output_file(exc: OSError, roots: list[Path]) -> str | None:
    """The output file a nameless ``OSError`` (a failed ``write()`` on an open file) was writing.

    Best effort: the innermost frame holding a ``path``-like local under one of ``roots``
    (``capture_schema.atomic`` names it ``path``); None when no frame says.
    """
    import traceback

    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        for name in ("path", "tmp", "filename", "file_path", "target"):
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
                candidate = Path(_user_path(value)).absolute()
                if any(candidate == r or r in candidate.parents for r in roots):
                    return _user_path(value)
    return None


def os_error_message(exc: OSError, args: argparse.Namespace) -> str:
    """``cannot write <path>: <strerror>`` (or ``cannot access`` when it may have been a read).

    "write" when the path is (under, or a folder on the way to) the command's output, or when
    the error is one only a write can give (ENOSPC, EFBIG, EROFS, EDQUOT).
    """
    import errno

    write_errnos = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT}
    strerror = exc.strerror or str(exc) or type(exc).__name__
    roots = _output_roots(args)
    if not isinstance(exc.filename, (str, bytes, os.PathLike)):  # a failed write() on an open file: no name
        where = _failed_output_file(exc, roots) or (str(roots[0]) if roots else None)
        verb = "write" if roots or exc.errno in write_errnos else "access"
        return f"cannot {verb} {where}: {strerror}" if where else f"cannot {verb}: {strerror}"
    path = Path(_user_path(exc.filename)).absolute()
    is_output = any(path == r or r in path.parents or path in r.parents for r in roots)
    verb = "write" if is_output or exc.errno in write_errnos else "access"
    return f"cannot {verb} {_user_path(exc.filename)}: {strerror}"
