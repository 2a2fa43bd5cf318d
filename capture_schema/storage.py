"""A storage root named by URL: ``file://`` (default) locally, any fsspec scheme beyond.

Local writes are atomic (temp name + rename). Object stores publish a whole object
on close, which gives the same guarantee there. ``local_path_of`` is the one rule for
telling a local path or ``file://`` URL from a remote one; every caller uses it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from capture_schema.atomic import atomic_write_bytes, write_if_changed


def local_path_of(url: str) -> Path | None:
    """The absolute local path of a plain path or ``file://`` URL; None for any other scheme (``s3://``...)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        raw = url[len("file://"):] if url.startswith("file://") else url
        return Path(raw).expanduser().resolve()
    return None


class Storage:
    """Read and write derived artefacts under one root URL, by relative path."""

    def __init__(self, url: str) -> None:
        if not url:
            raise ValueError("storage URL is empty; use e.g. file://./workspace_data or s3://bucket/prefix")
        self.url = url
        self.local_root = local_path_of(url)
        if self.local_root is None:
            import fsspec  # only needed for remote roots

            self._fs, self._root = fsspec.core.url_to_fs(url)
        else:
            self._fs, self._root = None, str(self.local_root)

    @property
    def is_local(self) -> bool:
        return self.local_root is not None

    def uri(self, relpath: str) -> str:
        """A human-readable location (a filesystem path when local)."""
        if self.local_root is not None:
            return str(self.local_root / relpath)
        return f"{self.url.rstrip('/')}/{relpath}"

    def local_path(self, relpath: str) -> Path:
        if self.local_root is None:
            raise ValueError(f"{self.url} is not a local storage root")
        return self.local_root / relpath

    def write_bytes(self, relpath: str, data: bytes) -> str:
        if self.local_root is not None:
            atomic_write_bytes(self.local_root / relpath, data)
        else:
            self._fs.pipe_file(f"{self._root}/{relpath}", data)
        return self.uri(relpath)

    def read_bytes(self, relpath: str) -> bytes:
        if self.local_root is not None:
            return (self.local_root / relpath).read_bytes()
        return self._fs.cat_file(f"{self._root}/{relpath}")

    def exists(self, relpath: str) -> bool:
        if self.local_root is not None:
            return (self.local_root / relpath).exists()
        return self._fs.exists(f"{self._root}/{relpath}")

    def delete(self, relpath: str) -> None:
        if self.local_root is not None:
            target = self.local_root / relpath
            if target.is_file():
                os.unlink(target)
        elif self._fs.exists(f"{self._root}/{relpath}"):
            self._fs.rm_file(f"{self._root}/{relpath}")

    def put_directory(self, local_dir: str | os.PathLike[str], relpath: str, first: tuple[str, ...] = ()) -> str:
        """Publish a finished local folder at ``relpath``, replacing an older one whole.

        Locally the folder is swapped in atomically (nothing to do when ``local_dir`` is
        ``relpath``'s own folder, built in place). Remotely each file becomes one object
        at ``relpath/<its path in local_dir>`` (never nested one level deeper on a second
        call, as ``fs.put(recursive=True)`` does), those named in ``first`` before the
        rest; then the objects the new folder no longer has are deleted, so the folder
        holds exactly the new files (a reader during the upload may still see old and
        new files side by side: object stores have no folder swap).
        """
        local_dir = Path(local_dir)
        if self.local_root is not None:
            target = self.local_root / relpath
            if target.exists() and local_dir.resolve() == target.resolve():
                return self.uri(relpath)
            import shutil

            from capture_schema.atomic import atomic_directory

            with atomic_directory(target) as tmp:
                shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
            return self.uri(relpath)
        prefix = f"{self._root}/{relpath}"
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.relative_to(local_dir).as_posix() not in first)  # stable: ``first`` up front
        old = set(self._fs.find(prefix)) if self._fs.isdir(prefix) else set()
        new = set()
        for path in files:
            target = f"{prefix}/{path.relative_to(local_dir).as_posix()}"  # the form ``find`` lists
            self._fs.pipe_file(target, path.read_bytes())
            new.add(target)
        for stale in sorted(old - new):
            self._fs.rm_file(stale)
        return self.uri(relpath)

    def folders(self, relpath: str) -> list[str]:
        """Names of the folders directly under ``relpath``, sorted; none when it is not a folder."""
        if self.local_root is not None:
            path = self.local_root / relpath
            return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
        full = f"{self._root}/{relpath}"
        if not self._fs.isdir(full):
            return []
        return sorted(entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in self._fs.ls(full, detail=True)
                      if entry["type"] == "directory")

    @contextmanager
    def local_directory(self, relpath: str) -> Iterator[Path]:
        """A local folder with ``relpath``'s files: the folder itself when local, a temporary copy otherwise."""
        if self.local_root is not None:
            path = self.local_root / relpath
            if not path.is_dir():
                raise FileNotFoundError(f"{self.uri(relpath)} does not exist")
            yield path
            return
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(relpath).name
            self._fs.get(f"{self._root}/{relpath}", str(target), recursive=True)
            yield target

    @contextmanager
    def staged_directory(self, relpath: str) -> Iterator[Path]:
        """An empty local folder that becomes ``relpath`` whole when the block succeeds, and is dropped if it fails.

        Locally it is a hidden sibling swapped in by rename (``atomic_directory``), so readers see
        the old folder or the new one, never a mix; remotely a temporary folder published with
        ``put_directory``.
        """
        if self.local_root is not None:
            from capture_schema.atomic import atomic_directory

            with atomic_directory(self.local_root / relpath) as tmp:
                yield tmp
            return
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
            self.put_directory(tmp, relpath)

    @contextmanager
    def resumable_directory(self, relpath: str, first: tuple[str, ...] = ()) -> Iterator[Path]:
        """A local folder for long work that must survive a crash (training), published whole on success.

        Locally the work happens in ``staging_dir(relpath)``, a sibling kept when the block fails
        so the next attempt resumes from it; a new attempt without one starts from a copy of the
        published folder (to continue a finished run). On success the staging folder replaces
        ``relpath`` by rename. Remotely: a temporary copy of the published folder, put back
        (``first`` files first) on success.
        """
        if self.local_root is None:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp) / "work"
                if self.exists(relpath):
                    self._fs.get(f"{self._root}/{relpath}", str(work), recursive=True)
                work.mkdir(exist_ok=True)
                yield work
                self.put_directory(work, relpath, first=first)
            return
        import shutil

        from capture_schema.atomic import atomic_directory
        from capture_schema.derived_layout import staging_dir

        target, work = self.local_root / relpath, self.local_root / staging_dir(relpath)
        if not work.is_dir():
            work.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                shutil.copytree(target, work)
            else:
                work.mkdir()
        yield work
        with atomic_directory(target) as tmp:
            os.rmdir(tmp)
            os.replace(work, tmp)

    def write_if_changed(self, relpath: str, data: bytes) -> bool:
        """Write only when the content differs, so reruns leave files (and mtimes) alone; True if written."""
        if self.local_root is not None:
            return write_if_changed(self.local_root / relpath, data)
        if self.exists(relpath) and self.read_bytes(relpath) == data:
            return False
        self.write_bytes(relpath, data)
        return True
