"""A captures root kept in a bucket (``s3://...``), read through a local mirror.

Every reader of raw captures (validation, calibration, landmarks, fits, shards) reads
files from a folder. For a root in object storage, a session is downloaded once into a
local cache folder and read there; the root's listing (for the scan and the sensor)
needs only each folder's ``session.json``. Raw captures are read-only forever, so an
object whose size and ETag are unchanged is never downloaded twice; one that changed in
the bucket is downloaded again and one that vanished leaves the mirror too. Each file
arrives under a temporary name and is renamed into place, so a reader never sees half
a file. The sensor's change detector reads the bucket's listing (sizes and ETags), not
the images.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any

from capture_schema.atomic import atomic_write_bytes
from capture_schema.layout import SESSION_FILE, is_valid_id
from capture_schema.session import read_session_fields

#: Where mirrors live unless ``O2A_CAPTURES_CACHE`` says otherwise (one folder per root URL).
DEFAULT_CACHE = Path("~/.cache/o2a/captures")


def default_cache_dir(url: str) -> Path:
    """``$O2A_CAPTURES_CACHE/<hash of url>`` (default ``~/.cache/o2a/captures/...``)."""
    base = Path(os.environ.get("O2A_CAPTURES_CACHE") or DEFAULT_CACHE).expanduser()
    return base / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def _version(info: dict[str, Any]) -> list:
    """What identifies an object's content without reading it: size and ETag (or mtime where there is none)."""
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return [int(info.get("size") or 0), str(tag)]


class CapturesMirror:
    """A local, read-only copy of (parts of) the captures root at ``url``."""

    def __init__(self, url: str, cache_dir: str | os.PathLike[str] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self._fs, self._root = fsspec.core.url_to_fs(self.url)
        self._root = self._root.rstrip("/")
        cache = Path(cache_dir) if cache_dir else default_cache_dir(self.url)
        self.local = cache / "root"  # the mirror: scanned and read as a captures root
        self._state = cache / "state"  # per top-level folder: the [size, ETag] of each file downloaded

    def exists(self) -> bool:
        return self._fs.isdir(self._root)

    def _objects(self, name: str) -> dict[str, list]:
        """Every object under the top-level entry ``name``: path relative to it -> [size, ETag]."""
        prefix = f"{self._root}/{name}"
        found = self._fs.find(prefix, detail=True)
        return {posixpath.relpath(path, prefix): _version(info) for path, info in found.items()
                if info.get("type") != "directory" and path != prefix}

    def root_listing(self) -> Path:
        """Mirror the root's outline: every top-level folder (empty but for its ``session.json``) and file.

        That is all ``scan_captures_root`` reads, so the scan of the mirror is the scan of the bucket.
        """
        self.local.mkdir(parents=True, exist_ok=True)
        self._fs.invalidate_cache(self._root)
        remote = {posixpath.basename(e["name"].rstrip("/")): e for e in self._fs.ls(self._root, detail=True)}
        with_session = {posixpath.basename(posixpath.dirname(p)): info for p, info in
                        self._fs.glob(f"{self._root}/*/{SESSION_FILE}", detail=True).items()}
        for stale in {p.name for p in self.local.iterdir()} - set(remote):
            path = self.local / stale
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        for name, info in sorted(remote.items()):
            if info["type"] == "directory":
                (self.local / name).mkdir(exist_ok=True)
                if name in with_session:
                    self._sync_files(name, {SESSION_FILE: _version(with_session[name])}, prune=False)
                elif (self.local / name / SESSION_FILE).is_file():
                    (self.local / name / SESSION_FILE).unlink()  # gone from the bucket
            elif not (self.local / name).is_file():
                (self.local / name).write_bytes(b"")  # a stray file: only its being a file matters to the scan
        return self.local

    def session(self, session_id: str) -> Path:
        """The local copy of a session folder, and of the root-level calibration folder it names, up to date."""
        self._sync_files(session_id, self._objects(session_id), prune=True)
        folder = self.local / session_id
        shared = self._shared_calibration(session_id)
        if shared is not None:
            self._sync_files(shared, self._objects(shared), prune=True)
        return folder

    def fingerprint(self, session_id: str) -> str:
        """A change detector from the bucket's listing: every object's path, size and ETag, the session's
        own and its shared calibration folder's (downloads only ``session.json``)."""
        digest = hashlib.sha256()
        own = self._objects(session_id)
        if SESSION_FILE in own:
            self._sync_files(session_id, {SESSION_FILE: own[SESSION_FILE]}, prune=False)
        digest.update(json.dumps([session_id, sorted(own.items())]).encode())
        shared = self._shared_calibration(session_id) if SESSION_FILE in own else None
        if shared is not None:
            digest.update(json.dumps([shared, sorted(self._objects(shared).items())]).encode())
        return digest.hexdigest()[:16]

    def _shared_calibration(self, session_id: str) -> str | None:
        """The root-level folder a session's ``calibration`` field names outside itself, if any."""
        folder = self.local / session_id
        if not (folder / SESSION_FILE).is_file():
            return None
        calibration = read_session_fields(folder).calibration
        if calibration is None:
            return None
        parts = Path(posixpath.normpath(posixpath.join(session_id, calibration))).parts
        if not parts or parts[0] in (session_id, "..", "/") or not is_valid_id(parts[0]):
            return None  # inside the session (synced with it) or outside the root (validation reports it)
        return parts[0]

    def _sync_files(self, name: str, remote: dict[str, list | None], prune: bool) -> None:
        """Download the objects of ``name`` whose version differs from what the mirror holds; with
        ``prune``, remove local files the bucket no longer has."""
        state_path = self._state / f"{name}.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        folder = self.local / name
        for rel, version in sorted(remote.items()):
            target = folder / rel
            if state.get(rel) == version and target.is_file():
                continue
            atomic_write_bytes(target, self._fs.cat_file(f"{self._root}/{name}/{rel}"))
            state[rel] = version
        if prune:
            for path in sorted(folder.rglob("*"), reverse=True):
                rel = path.relative_to(folder).as_posix()
                if path.is_file() and rel not in remote:
                    path.unlink()
                    state.pop(rel, None)
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        atomic_write_bytes(state_path, json.dumps(state, sort_keys=True).encode())
