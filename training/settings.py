"""Validated overrides of the config dataclasses, the one path every override source takes.

The configs (``PriorConfig``, ``FewShotConfig``, ``ShardConfig``, ``SplitRule``,
``AblationConfig``) are frozen stdlib dataclasses whose ``__post_init__`` checks
ranges, not types. Overrides reach them from three places: the ablation spec
(YAML), ``o2a prior train --set FIELD=VALUE`` (text) and Dagster run config.
Each goes through ``apply_overrides``, so each refuses the same things with the
same message: an unknown name (with a did-you-mean hint), a value of the wrong
type (checked by pydantic against the field's annotation), or a combination the
dataclass's own invariants reject. Every refusal is a ``SettingsError`` naming
the source and the field.

Typed sources (YAML, JSON, Dagster, Python) are checked strictly: ``lr: fast``,
``iterations: 4.5`` and ``iterations: true`` are refused, an integer is accepted
where a number is wanted, and a list where a tuple is. Text sources (``text=True``)
are parsed by pydantic's lax mode: ``"128"`` -> 128, ``"1e-3"`` -> 0.001,
``"true"``/``"false"``/``"1"``/``"0"`` -> bool, ``"1,3"`` -> (1, 3); ``"1.5"`` for
an integer is refused. Floats must be finite everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, Mapping, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

T = TypeVar("T")

_STRICT = ConfigDict(allow_inf_nan=False)
_KINDS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "true/false values")}


class SettingsError(ValueError):
    """An override that cannot be applied. ``str()`` names the source and the field.

    ``problem`` is the message without the source (and without the field when ``field`` is set), for
    callers that frame it themselves (the ablation spec names its file, configuration and key).
    """

    def __init__(self, source: str, problem: str, field: str | None = None) -> None:
        self.source, self.problem, self.field = source, problem, field
        what = f"{field} {problem}" if field else problem
        super().__init__(f"{source}: {what}" if source else what)


def unknown_names(names: list[Any], known: typing.Sequence[str], what: str) -> str:
    """``unknown key(s) 'iteration' (did you mean 'iterations'?); allowed: ...``."""
    hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(str(k), known, 1)) else "")
             for k in names]
    return f"unknown {what} {', '.join(hints)}; allowed: {', '.join(known)}"


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` (for mirrors such as Dagster configs: no restated literals)."""
    field = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if field is None:
        raise AttributeError(f"{cls.__name__} has no field {name!r}")
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise AttributeError(f"{cls.__name__}.{name} has no default")


@functools.cache
def _annotations(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation, in field order (``from __future__ import annotations`` makes them text)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation, config=_STRICT)


def _arms(annotation: Any) -> tuple[Any, ...]:
    """``X | None`` -> (X,); anything else -> (annotation,)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _is_sequence(annotation: Any) -> bool:
    return any(typing.get_origin(a) in (tuple, list) or a in (tuple, list) for a in _arms(annotation))


def describe(annotation: Any) -> str:
    """A type as a config reader says it: ``an integer``, ``a list of integers``, ``one of 'l1', 'l2'``."""
    arm = _arms(annotation)[0]
    origin, args = typing.get_origin(arm), typing.get_args(arm)
    if arm in _KINDS:
        return _KINDS[arm][0]
    if origin is typing.Literal:
        return f"one of {', '.join(map(repr, args))}"
    if origin in (tuple, list) or arm in (tuple, list):
        return f"a list of {_KINDS[args[0]][1]}" if args and args[0] in _KINDS else "a list"
    if origin in (dict, Mapping) or arm is dict:
        return "a mapping"
    return getattr(arm, "__name__", str(arm))


def _from_text(annotation: Any, raw: Any) -> Any:
    """A command-line string as the input of lax validation: ``"1,3"`` -> ``["1", "3"]`` for list fields."""
    if isinstance(raw, str) and _is_sequence(annotation):
        return [part.strip() for part in raw.split(",")] if raw.strip() else []
    return raw


def _check(name: str, annotation: Any, value: Any, text: bool) -> Any:
    if text:
        candidate = _from_text(annotation, value)
    else:  # YAML and JSON have no tuples: a list is how a tuple field arrives
        candidate = tuple(value) if isinstance(value, list) and _is_sequence(annotation) else value
    try:
        return _adapter(annotation).validate_python(candidate, strict=not text)
    except ValidationError as err:
        kinds = {e["type"] for e in err.errors()}
    if "finite_number" in kinds:
        raise SettingsError("", f"must be a finite number, got {value!r}", name)
    hint = ""
    if not text and isinstance(value, str):
        try:  # text that would parse: say so (PyYAML reads 1e-3 as a string, YAML 1.1 floats need a dot)
            _adapter(annotation).validate_python(value, strict=False)
            hint = (" (PyYAML reads 1e-3 as a string: write 1.0e-3)" if float in _arms(annotation)
                    else " (a string: write it without quotes)")
        except ValidationError:
            pass
    raise SettingsError("", f"must be {describe(annotation)}, got {value!r}{hint}", name)


def check_changes(config: Any, changes: Mapping[str, Any], source: str = "", *, text: bool = False) -> dict[str, Any]:
    """``changes`` with every value of its field's type; ``SettingsError`` for an unknown name or a wrong type.

    ``config`` is a dataclass or an instance of one. ``text=True``: the values are command-line strings,
    parsed (pydantic lax mode) rather than checked strictly. Ranges and other invariants are the
    dataclass's business: ``apply_overrides`` applies them.
    """
    cls = config if isinstance(config, type) else type(config)
    annotations = _annotations(cls)
    if not isinstance(changes, Mapping):
        raise SettingsError(source, f"{cls.__name__} overrides must be a mapping, got {type(changes).__name__} "
                                    f"{changes!r}")
    if unknown := [k for k in changes if k not in annotations]:
        raise SettingsError(source, unknown_names(unknown, list(annotations), f"{cls.__name__} field(s)"))
    out = {}
    for name, value in changes.items():
        try:
            out[name] = _check(name, annotations[name], value, text)
        except SettingsError as err:
            raise SettingsError(source, err.problem, err.field) from None
    return out


def apply_overrides(base: T, changes: Mapping[str, Any], source: str = "", *, text: bool = False) -> T:
    """``base`` (a dataclass instance) with ``changes``, checked by name, by type and by its own invariants.

    Every problem is one ``SettingsError`` whose message starts with ``source`` (e.g. ``spec.yaml:
    configuration 'c', field 'prior_changes'`` or ``--set``) and names the field.
    """
    typed = check_changes(base, changes, source, text=text)
    try:
        return dataclasses.replace(base, **typed)
    except (TypeError, ValueError) as err:
        raise SettingsError(source, f"{type(base).__name__} rejects {typed}: {err}") from None
