"""Read the contract's small JSON documents (session.json, board.json, calibration.json) safely.

Every failure is a ``JsonFileError`` (a ``ValueError``) naming the file and the reason;
no input, however hostile, gives a traceback, blocks or allocates without bound:

- the file is read by ``safe_read.read_bounded``: a FIFO, device, socket or folder is
  refused without reading (opening a FIFO for reading would otherwise wait forever
  for a writer), and a file larger than ``max_bytes`` before it is read;
- the text must be UTF-8 and strict JSON: ``NaN``, ``Infinity``, ``-Infinity`` (which
  Python's ``json`` accepts by default) and numbers that overflow to infinity
  (``1e400``) are refused, as are duplicate keys in an object (which ``json`` would
  resolve silently by keeping the last);
- nesting deeper than ``MAX_DEPTH`` is refused (``json.loads`` itself raises
  ``RecursionError`` near Python's recursion limit; shallower but still deep values
  would do the same later in ``repr`` or ``json.dumps``).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from capture_schema.safe_read import RefusedFile, read_bounded

#: The contract's documents are a few KB (a 13-camera calibration.json is ~10 KB);
#: 4 MiB leaves room for any plausible growth and bounds the memory a hostile file costs.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024

#: calibration.json, the deepest document, nests 5 levels (root, cameras, camera, R, row);
#: 32 leaves room for extra metadata and stays far below Python's recursion limit.
MAX_DEPTH = 32


class JsonFileError(ValueError):
    """A contract JSON file that cannot be read or is not strict JSON.

    ``path`` is the file, ``reason`` says what is wrong (without the path) and
    ``kind`` is ``"io"`` (missing, unreadable, not a regular file, too large, not
    UTF-8) or ``"json"`` (syntax, nesting, non-finite number, duplicate key) or
    ``"content"`` (valid JSON that breaks the document's own rules).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, kind: str = "json") -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason
        self.kind = kind


#: ``json`` decodes "\\ud800" to a lone surrogate, which no UTF-8 writer can encode again.
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Constant:
    """Stands in for a ``NaN``/``Infinity``/``-Infinity`` token until its place is known."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:80]!r} in an object")
        out[key] = value
    return out


def _path_text(path: tuple) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and len(part) <= 60:
            out += f".{part}"
        else:
            out += f"[{part[:60]!r}]"
    return out


def _check_tree(value: Any, limit: int) -> str | None:
    """Why ``value`` is refused (too deep, or a non-finite number and where), else None.

    Iterative, so it never recurses however deep the document is.
    """
    stack: list[tuple[Any, tuple]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            children = [(child, path + (key,)) for key, child in item.items()]
        elif isinstance(item, list):
            children = [(child, path + (i,)) for i, child in enumerate(item)]
        elif isinstance(item, _Constant):
            return f"{item.token} at {_path_text(path)} is not allowed: only finite numbers are valid JSON"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"the number at {_path_text(path)} is out of range for a 64-bit float"
        elif isinstance(item, str) and _SURROGATE.search(item):
            return f"the string at {_path_text(path)} holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)"
        else:
            continue
        if isinstance(item, dict):
            bad_key = next((key for key in item if _SURROGATE.search(key)), None)
            if bad_key is not None:
                return f"a key in {_path_text(path)} holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)"
        if len(path) >= limit:
            return f"nesting too deep (at most {limit} levels of arrays/objects)"
        stack.extend(reversed(children))  # report the first offender in document order
    return None


def parse_json_text(text: str, source: str | os.PathLike[str] = "<text>") -> Any:
    """Decode strict JSON ``text``; ``source`` names it in a ``JsonFileError``."""
    try:
        data = json.loads(
            text,
            parse_constant=_Constant,
            object_pairs_hook=_no_duplicate_keys,
        )
    except RecursionError:
        raise JsonFileError(source, f"nesting too deep (at most {MAX_DEPTH} levels of arrays/objects)") from None
    except json.JSONDecodeError as exc:
        raise JsonFileError(source, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # the duplicate-key hook, or an integer beyond Python's int_max_str_digits
        reason = str(exc)
        if "integer string conversion" in reason:
            reason = "an integer has too many digits"
        raise JsonFileError(source, f"not valid JSON: {reason}") from None
    problem = _check_tree(data, MAX_DEPTH)
    if problem:
        raise JsonFileError(source, problem)
    return data


def read_json_file(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Read and decode a small strict-JSON file; every failure is a ``JsonFileError``."""
    try:
        data = read_bounded(path, max_bytes, follow_symlinks=True)
    except RefusedFile as exc:
        if exc.kind:
            reason = f"not a regular file (it is {exc.kind})"
        elif exc.limit is not None:
            reason = f"too large: {exc.reason}, at most {exc.limit} allowed"
        else:
            reason = exc.reason
        raise JsonFileError(path, reason, "io") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonFileError(path, f"not UTF-8 text (invalid byte at offset {exc.start})", "io") from None
    return parse_json_text(text, path)
