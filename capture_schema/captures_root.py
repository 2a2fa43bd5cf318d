"""Account for every entry directly under a captures root: a session, a shared calibration, or why not.

Nothing under the root may be skipped without a word: a folder with a bad name or
no ``session.json``, a stray file or a symlink each get a reason a person can act on,
and the CLI, the sensor and the ``capture_folders`` asset all report the same list.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from capture_schema.layout import SESSION_FILE, is_valid_id
from capture_schema.safe_read import file_kind
from capture_schema.session import read_session_fields

SESSION, CALIBRATION, NOT_A_SESSION = "session", "calibration", "not_a_session"


@dataclass(frozen=True, order=True)
class RootEntry:
    """One entry of the captures root: its name, what it is, and (unless a session) why."""

    name: str
    kind: str
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _calibration_users(root: Path, sessions: list[str]) -> dict[str, list[str]]:
    """Root-level folders that sessions name as their (shared) calibration, with the sessions naming them."""
    users: dict[str, list[str]] = {}
    for name in sessions:
        calibration = read_session_fields(root / name).calibration
        if calibration is None:
            continue
        try:
            target = (root / name / calibration).resolve().relative_to(root)
        except (ValueError, OSError, RuntimeError):
            continue  # leads outside the root: the session's own validation reports it
        if len(target.parts) >= 1 and target.parts[0] != name:
            users.setdefault(target.parts[0], []).append(name)
    return users


def scan_captures_root(root: str | os.PathLike[str]) -> list[RootEntry]:
    """Every entry directly under ``root``, sorted by name, classified without following links.

    A *session* is a real folder with a valid id as its name and a ``session.json``
    (whether that file is valid is the session's own validation's business, so a
    broken one is quarantined, not skipped). A folder that sessions name as their
    ``calibration`` is a *calibration*. Everything else is *not a session*, with the reason.
    """
    root = Path(root).resolve()
    entries: list[tuple[str, os.stat_result]] = []
    with os.scandir(root) as it:
        for entry in it:
            entries.append((entry.name, entry.stat(follow_symlinks=False)))
    folders = {name for name, st in entries if stat.S_ISDIR(st.st_mode)}
    candidates = sorted(n for n in folders if os.path.lexists(root / n / SESSION_FILE))
    sessions = [n for n in candidates if is_valid_id(n)]
    calibration_users = _calibration_users(root, sessions)
    out: list[RootEntry] = []
    for name, st in sorted(entries):
        if name in sessions:
            out.append(RootEntry(name, SESSION))
        elif name in calibration_users:
            users = calibration_users[name]
            out.append(RootEntry(name, CALIBRATION, f"shared calibration folder of {len(users)} session(s): "
                                                    f"{', '.join(users[:5])}{' ...' if len(users) > 5 else ''}"))
        elif name not in folders:
            out.append(RootEntry(name, NOT_A_SESSION, f"{file_kind(st.st_mode) or 'a file'}, not a session folder; move it out of "
                                                      "the captures root"))
        elif name in candidates:
            out.append(RootEntry(name, NOT_A_SESSION, f"holds a {SESSION_FILE} but its name is not a valid id "
                                                      "([A-Za-z0-9_-], 1-128 characters); rename the folder"))
        else:
            out.append(RootEntry(name, NOT_A_SESSION, f"no {SESSION_FILE} in the folder; add one (see the README's "
                                                      "session layout) or move the folder out"))
    return out


def session_ids(entries: list[RootEntry]) -> list[str]:
    """The names of the entries that are sessions, in order."""
    return [e.name for e in entries if e.kind == SESSION]


def unusable(entries: list[RootEntry]) -> list[RootEntry]:
    """The entries that are neither a session nor a calibration in use."""
    return [e for e in entries if e.kind == NOT_A_SESSION]


def _fingerprint_tree(digest: "hashlib._Hash", folder: Path, label: str) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            _fingerprint_file(digest, path, f"{label}/{path.relative_to(folder)}")


def _fingerprint_file(digest: "hashlib._Hash", path: Path, label: str) -> None:
    try:
        st = path.lstat()
    except OSError:
        return
    digest.update(f"{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def session_fingerprint(session_dir: Path) -> str:
    """A cheap change detector: every file's relative path, size and mtime (no image reads),
    including the files of a calibration folder, or an imported calibration file, shared from outside
    the session."""
    digest = hashlib.sha256()
    _fingerprint_tree(digest, session_dir, ".")
    calibration = read_session_fields(session_dir).calibration
    if calibration is not None:
        calib_dir = (session_dir / calibration).resolve()
        if calib_dir.is_relative_to(session_dir.resolve()):
            pass  # already in the session's own tree
        elif calib_dir.is_dir():
            _fingerprint_tree(digest, calib_dir, calibration)
        elif calib_dir.is_file():
            _fingerprint_file(digest, calib_dir, calibration)
    return digest.hexdigest()[:16]
