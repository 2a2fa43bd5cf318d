"""Atomic writes: every derived file appears whole or not at all.

A crash mid-write must never leave a half-written artefact under its final
name, so writers go to a temporary sibling and ``os.replace`` it into place.
``durable=True`` also fsyncs before the rename (survives power loss, costs ~5-10 ms
a file on ordinary disks); derived artefacts that can be recomputed skip it.

Published files and folders get the permissions any new file would (``0666`` /
``0777`` less the umask), not ``mkstemp``'s private ``0600``, so other services
sharing the store can read them. A write killed part-way leaves a hidden
``.<name>.*.tmp`` sibling; the next write of the same path removes those older than
``STALE_TEMP_AGE_S`` (younger ones may belong to a writer still running).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

#: A temporary older than this is left over from a killed write: the longest atomic write
#: (publishing a session's shard folder, ~1 GB at 2048 px) takes minutes, not an hour.
STALE_TEMP_AGE_S = 3600.0


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Read once: ``os.umask`` can only be read by setting it, which is not thread-safe later on.
_UMASK = _process_umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def sweep_stale_temporaries(path: str | os.PathLike[str], max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove ``path``'s leftover temporaries (``.<name>.*.tmp`` and ``.<name>.old.*``) older than ``max_age_s``."""
    path = Path(path)
    removed: list[Path] = []
    cutoff = time.time() - max_age_s
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or not (name.endswith(".tmp") or name[len(prefix):].startswith("old.")):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue  # another process swept it first, or it is not ours to remove
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_if_changed(path: str | os.PathLike[str], data: bytes) -> bool:
    """Write atomically only when the content differs, so reruns leave files (and mtimes) alone; True if written."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    return True


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def canonical_json(data: Any) -> str:
    """Deterministic JSON (fixed indent, no NaN) so reruns are byte-identical.

    Keys keep insertion order: orders carry meaning (cameras in rig order, the
    first camera defining the world frame), and dicts are built deterministically.
    """
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, canonical_json(data))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    An existing ``path`` is kept until the new one is complete, then swapped out.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, DIR_MODE)
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        elif old is not None:
            old.unlink(missing_ok=True)  # a file (or link) stood where the folder goes
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
