"""Load third-party model pickles (FLAME and friends) without running their code.

A pickle can call any importable function while it loads, so ``pickle.load`` on a
downloaded ``generic_model.pkl`` is arbitrary code execution. This unpickler
resolves globals only from a small allow-list: what numpy arrays, scipy sparse
matrices and Python-2 era byte strings need, plus chumpy classes, which are mapped
to an inert stand-in (``ChumpyStandIn``) so FLAME 2020's ``shapedirs`` loads
without installing chumpy. Every other global raises ``UnsafePickleError`` before
it is called.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import IO, Any

import numpy as np
import scipy.sparse

__all__ = ["ChumpyStandIn", "PickleFormatError", "UnsafePickleError", "load_restricted_pickle"]


class UnsafePickleError(ValueError):
    """The pickle references a global outside the allow-list (or misuses an allowed one)."""


class PickleFormatError(ValueError):
    """The file is not a complete, well-formed pickle (empty, truncated or garbage bytes)."""


class ChumpyStandIn:
    """Inert replacement for a pickled ``chumpy`` object: keeps its state, runs nothing.

    chumpy pickles an object as its ``__dict__``; for a plain ``chumpy.ch.Ch`` that
    dict holds the value under ``x``. Derived chumpy expressions (sums, products)
    store no value, so ``x`` raises for them instead of guessing.
    """

    chumpy_name = "chumpy.ch.Ch"

    def __new__(cls, *args: Any, **kwargs: Any) -> "ChumpyStandIn":
        obj = super().__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def x(self) -> np.ndarray:
        """The stored value as an ndarray (what ``np.asarray(ch)`` gives with chumpy)."""
        if isinstance(self.state, dict) and "x" in self.state:
            return np.asarray(self.state["x"])
        raise ValueError(f"pickled {self.chumpy_name} object has no stored value 'x' (a derived chumpy expression?)")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.x, dtype=dtype)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} standing in for {self.chumpy_name}>"


_CHUMPY_MODULES = ("chumpy.ch", "chumpy.ch_ops", "chumpy.reordering")
_chumpy_classes: dict[str, type[ChumpyStandIn]] = {"chumpy.ch.Ch": ChumpyStandIn}


def _chumpy_class(qualified: str) -> type[ChumpyStandIn]:
    """One stand-in subclass per chumpy class name, so ``type(obj).chumpy_name`` says which."""
    if qualified not in _chumpy_classes:
        name = qualified.rsplit(".", 1)[1]
        _chumpy_classes[qualified] = type(f"ChumpyStandIn_{name}", (ChumpyStandIn,), {"chumpy_name": qualified})
    return _chumpy_classes[qualified]


def _latin1_encode(text: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: only str -> latin-1."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError(f"_codecs.encode is only allowed as str -> latin1, got encoding {encoding!r}")
    return text.encode("latin1", errors="strict")


def _empty_bytes(*args: Any) -> bytes:
    """``builtins.bytes`` as protocol-2 pickles use it: ``bytes()`` for an empty bytes object."""
    if args:
        raise UnsafePickleError("builtins.bytes is only allowed with no arguments (empty bytes)")
    return b""


def _dtype_copy(obj: Any, align: bool = False, copy: bool = True) -> np.dtype:
    """``numpy.dtype`` as pickles call it, always copying, so a following BUILD sets state on
    a fresh dtype rather than on one of numpy's shared instances (numpy also guards those)."""
    return np.dtype(obj, align=bool(align), copy=True)


_SPARSE = {
    "csc_matrix": scipy.sparse.csc_matrix,
    "csr_matrix": scipy.sparse.csr_matrix,
    "coo_matrix": scipy.sparse.coo_matrix,
    "csc_array": scipy.sparse.csc_array,
    "csr_array": scipy.sparse.csr_array,
    "coo_array": scipy.sparse.coo_array,
}
_SPARSE_MODULES = {"scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr",
                   "scipy.sparse.coo", "scipy.sparse._coo"}  # fmt: skip

_core = np._core if hasattr(np, "_core") else np.core  # numpy >= 2 / numpy 1.x

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype_copy,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("builtins", "object"): object,  # only ever reaches __new__ through _safe_reconstructor
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _core.multiarray._reconstruct
    _ALLOWED[(_mod, "scalar")] = _core.multiarray.scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _core.numeric._frombuffer  # protocol-5 arrays
for _mod in _SPARSE_MODULES:
    for _name, _cls in _SPARSE.items():
        if _mod == "scipy.sparse" or _mod.endswith(_name[:3]):
            _ALLOWED[(_mod, _name)] = _cls

# Python-2 module names, which ``fix_imports`` would map but an overridden find_class sees raw.
_PY2_MODULES = {"copy_reg": "copyreg", "__builtin__": "builtins"}


def _reconstruct_target_allowed(cls: Any) -> bool:
    return isinstance(cls, type) and (
        issubclass(cls, ChumpyStandIn) or cls in _SPARSE.values() or cls is np.ndarray
    )


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects), limited to allowed classes.

    The real one runs ``base.__new__(cls)`` (and ``base.__init__`` for a non-object
    base), so it is only harmless when ``cls`` is one of ours and ``base`` is object.
    """
    if not _reconstruct_target_allowed(cls) or base is not object or state is not None:
        raise UnsafePickleError(f"copyreg._reconstructor refused for class {cls!r} with base {base!r}")
    return cls.__new__(cls)


def _buildable(inst: Any) -> bool:
    """Objects BUILD may set state on: fresh instances of allowed types, never a class or function."""
    return isinstance(inst, (np.ndarray, np.dtype, np.generic, ChumpyStandIn)) or (
        scipy.sparse.issparse(inst) and not isinstance(inst, type)
    )


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, so BUILD can be checked too (the C one cannot be hooked per opcode).

    Without that check ``GLOBAL scipy.sparse csc_matrix`` + ``BUILD (None, {...})``
    would set attributes on the real class, i.e. monkeypatch scipy process-wide.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        mod = _PY2_MODULES.get(module, module)
        if (mod, name) in _ALLOWED:
            return _ALLOWED[(mod, name)]
        if (mod, name) == ("copyreg", "_reconstructor"):
            return _safe_reconstructor
        if mod in _CHUMPY_MODULES and name.isidentifier() and not name.startswith("_"):
            return _chumpy_class(f"{mod}.{name}")
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}' from {self._source}: only numpy arrays, scipy sparse "
            "matrices and chumpy values are allowed in a model pickle"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r} in {self._source}")

    def load_build(self) -> None:
        target = self.stack[-2]  # the stack holds [..., object, state]
        if not _buildable(target):
            raise UnsafePickleError(f"refusing to set state on {target!r} in {self._source}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def load_restricted_pickle(path_or_fileobj: str | os.PathLike | IO[bytes] | bytes) -> Any:
    """Unpickle with ``encoding="latin1"`` (Python-2 era files), resolving only allow-listed globals.

    Raises ``UnsafePickleError`` naming the refused global and the file before that
    global is ever called, and ``PickleFormatError`` naming the file when it is empty,
    truncated or not a pickle at all (whatever the unpickler tripped over: ``EOFError``,
    ``UnpicklingError``, a ``KeyError`` for a bad memo reference, ``struct.error``, ...).
    ``OSError`` (a missing or unreadable file) passes through unchanged.
    """
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        source = os.fspath(path_or_fileobj)
        with open(path_or_fileobj, "rb") as f:
            return _load(f, str(source))
    if isinstance(path_or_fileobj, (bytes, bytearray)):  # in-memory data
        return _load(io.BytesIO(path_or_fileobj), "<bytes>")
    source = str(getattr(path_or_fileobj, "name", "<file object>"))
    return _load(path_or_fileobj, source)


def _load(file: IO[bytes], source: str) -> Any:
    try:
        return _RestrictedUnpickler(file, source).load()
    except (UnsafePickleError, OSError):
        raise
    except EOFError:
        raise PickleFormatError(f"{source} is empty or truncated: not a complete pickle") from None
    except Exception as exc:  # garbage bytes: any opcode may fail in its own way (MemoryError included)
        detail = str(exc).strip() or type(exc).__name__
        raise PickleFormatError(f"{source} is not a readable pickle ({type(exc).__name__}: {detail[:200]})") from None

