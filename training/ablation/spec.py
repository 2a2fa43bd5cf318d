"""The balance-ablation spec: named configurations of one image budget, read from YAML.

Why a file and not code: each configuration becomes a Dagster partition (one
subset, one prior, one few-shot evaluation), so the set has to be reviewable,
diffable and tied to its results (``digest`` is the sha256 of the text). Why
validate everything here: a typo, a wrongly typed preset field or a budget that
does not multiply out must fail when the spec is loaded, naming the file, the
configuration and the field, not an hour into a training run. Why ``seeds``:
one trained prior per configuration cannot tell a real difference from the
noise of one subset draw and one initialisation, so every configuration is
repeated once per seed (``AblationConfig.select`` / ``prior_config`` with the
repeat seed) and the report compares them with ``training.ablation.stats``. Choosing the
images is ``training.subsample.select_budget``, imported only by
``AblationConfig.select`` so that reading a spec does not import torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from capture_schema.layout import is_valid_id
from training.dataset_index import SPLITS
from training.fewshot import config as fewshot_cfg
from training.prior import config as prior_cfg
from training.settings import SettingsError, apply_overrides, check_changes, default_of, unknown_names

if TYPE_CHECKING:
    import pandas as pd

    from training.subsample import SelectedSubset

DEFAULT_SPEC = Path(__file__).with_name("default.yaml")
VERSION = 1
TRAIN_SPLIT = "train"
TOP_LEVEL_KEYS = ("version", "defaults", "seeds", "fewshot_preset", "fewshot", "test_splits", "configurations")
CONFIG_KEYS = ("description", "images", "identities", "views_per_identity", "expressions_per_identity",
               "views", "expressions", "prior_preset", "prior_changes", "seed")


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file, the configuration and the field."""


def _where(source: str, config: object = None, key: str | None = None) -> str:
    where = ([f"configuration {config!r}"] if config is not None else []) + ([f"field {key!r}"] if key else [])
    return f"{source}: {', '.join(where)}" if where else source


def _error(source: str, message: str, config: object = None, key: str | None = None) -> SpecError:
    return SpecError(f"{_where(source, config, key)}: {message}")


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


@dataclass(frozen=True)
class AblationConfig:
    """One configuration: ``images`` = ``identities`` x views x expressions per identity, and its prior."""

    name: str
    images: int
    identities: int
    views_per_identity: int | None = None
    expressions_per_identity: int | None = None
    views: tuple[str, ...] | None = None
    expressions: tuple[str, ...] | None = None
    prior_preset: str = "cpu"
    prior_changes: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    """Seeds the subset draw (``select_budget``); the prior's own seed is a ``prior_changes`` field. Repeat
    seed ``s`` of the spec's ``seeds`` adds ``s`` to both."""
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("views", "expressions"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "prior_changes", dict(self.prior_changes))

    @property
    def n_views(self) -> int:
        return self.views_per_identity or len(self.views or ())

    @property
    def n_expressions(self) -> int:
        return self.expressions_per_identity or len(self.expressions or ())

    def budget_text(self) -> str:
        """E.g. ``8 = 8 identities x 1 view ['mid_C00'] x 1 expression ['neutral'] per identity``."""
        def part(word: str, count: int | None, pool: tuple[str, ...] | None) -> str:
            if pool is None:
                return _plural(count or 0, word)
            return f"{_plural(len(pool), word)} {list(pool)}" if count is None else \
                f"{_plural(count, word)} drawn from {list(pool)}"
        return (f"{self.images} = {_plural(self.identities, 'identity', 'identities')} x "
                f"{part('view', self.views_per_identity, self.views)} x "
                f"{part('expression', self.expressions_per_identity, self.expressions)} per identity")

    def prior_config(self, repeat_seed: int = 0) -> prior_cfg.PriorConfig:
        """The prior of repeat ``repeat_seed``: the preset with ``prior_changes``, its seed shifted by the repeat
        (each repeat starts from another initialisation and batch order)."""
        config = prior_cfg.preset(self.prior_preset, **self.prior_changes)
        return config.with_changes(seed=config.seed + repeat_seed) if repeat_seed else config

    def select(self, index: pd.DataFrame, repeat_seed: int = 0) -> SelectedSubset:
        """This configuration's images from the index's train split, drawn with seed ``seed + repeat_seed`` (each
        repeat draws other identities / views / expressions); ``BudgetError`` says what is missing."""
        from training.subsample import BudgetError, select_budget

        try:
            return select_budget(
                index, n_images=self.images, n_identities=self.identities,
                views_per_identity=self.views_per_identity, expressions_per_identity=self.expressions_per_identity,
                views=None if self.views is None else list(self.views),
                expressions=None if self.expressions is None else list(self.expressions),
                split=TRAIN_SPLIT, seed=self.seed + repeat_seed)
        except BudgetError as err:
            raise BudgetError(f"configuration {self.name!r} (budget {self.budget_text()}): {err}") from err

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: What a key neither the configuration nor ``defaults`` gives is: the field's default (``images`` and
#: ``identities`` have none).
FALLBACKS: dict[str, Any] = {key: default_of(AblationConfig, key) for key in CONFIG_KEYS
                             if key not in ("images", "identities")}


@dataclass(frozen=True)
class AblationSpec:
    """The configurations (file order) and the few-shot protocol every one of them is scored with."""

    configurations: tuple[AblationConfig, ...]
    seeds: tuple[int, ...] = (0,)
    """Repeat seeds: every configuration is selected, trained and scored once per seed (``seed-<s>/``)."""
    fewshot: dict[str, Any] = field(default_factory=dict)
    """FewShotConfig overrides as written (lists, not tuples: JSON-able)."""
    fewshot_preset: str = "cpu"
    test_splits: tuple[str, ...] = ("test",)
    source: str = "<string>"
    digest: str = ""

    def names(self) -> list[str]:
        return [c.name for c in self.configurations]

    def get(self, name: str) -> AblationConfig:
        if config := next((c for c in self.configurations if c.name == name), None):
            return config
        raise _error(self.source, f"no configuration {name!r}; known: {', '.join(self.names())}")

    def fewshot_config(self) -> fewshot_cfg.FewShotConfig:
        """The same for every configuration and repeat: all score the same held-out frames (paired comparison)."""
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in self.fewshot.items()}
        return fewshot_cfg.fewshot_preset(self.fewshot_preset, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "digest": self.digest, "seeds": list(self.seeds),
                "fewshot_preset": self.fewshot_preset,
                "fewshot": dict(self.fewshot), "test_splits": list(self.test_splits),
                "configurations": [c.to_dict() for c in self.configurations]}


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` semantics, but a repeated key (e.g. two ``balanced:``) is an error, not last-wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                            f"found duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _ids(source: str, config: str | None, key: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or len(set(map(str, value))) != len(value):
        raise _error(source, f"must be a non-empty list of distinct ids, got {value!r}", config, key)
    if bad := [v for v in value if not is_valid_id(v)]:
        raise _error(source, f"invalid id(s) {bad} (letters, digits, '_' and '-' only)", config, key)
    return tuple(value)


def _seeds(source: str, value: Any) -> tuple[int, ...]:
    if value is None:
        return (0,)
    if (not isinstance(value, list) or not value or any(type(v) is not int or v < 0 for v in value)
            or len(set(value)) != len(value)):
        raise _error(source, f"must be a non-empty list of distinct integers >= 0 (repeat seeds), got {value!r}",
                     key="seeds")
    return tuple(value)


def _mapping(source: str, config: str | None, key: str, value: Any) -> dict[Any, Any]:
    if value is not None and not isinstance(value, dict):
        raise _error(source, f"must be a mapping, got {type(value).__name__} {value!r}", config, key)
    return value or {}


def _overrides(source: str, config: str | None, key: str, value: Any, base: Any) -> dict[str, Any]:
    """Field overrides of the dataclass ``base``, checked by ``training.settings`` (names, types, and
    ``base``'s own invariants), as JSON-able data: ``lr: "fast"`` fails here, not in training."""
    changes = _mapping(source, config, key, value)
    try:
        result = apply_overrides(base, changes, _where(source, config, key))
    except SettingsError as err:
        raise SpecError(str(err)) from None
    return {name: list(v) if isinstance(v := getattr(result, name), tuple) else v for name in changes}


def _parse_config(source: str, name: Any, body: Any, defaults: dict[str, Any]) -> AblationConfig:
    if not is_valid_id(name):
        raise _error(source, f"invalid configuration name {name!r}: names become Dagster partition keys "
                             "(letters, digits, '_' and '-', at most 128 characters)")
    body = _mapping(source, name, "", body)
    if unknown := [k for k in body if k not in CONFIG_KEYS]:
        raise _error(source, unknown_names(unknown, CONFIG_KEYS, "key(s)"), name)
    s = {**FALLBACKS, **defaults, **body}
    for key in ("images", "identities"):
        if key not in s:
            raise _error(source, "missing (no default either)", name, key)
    try:  # the types of every key but prior_changes (its own fields are checked below); strict: `images: 8.0`
        t = check_changes(AblationConfig, {k: v for k, v in s.items() if k != "prior_changes"})
    except SettingsError as err:
        raise _error(source, err.problem, name, err.field) from None
    for key in ("images", "identities", "views_per_identity", "expressions_per_identity"):
        if t[key] is not None and t[key] < 1:
            raise _error(source, f"must be an integer >= 1, got {t[key]!r}", name, key)
    views, exprs = _ids(source, name, "views", t["views"]), _ids(source, name, "expressions", t["expressions"])
    for word, count, pool in (("views", t["views_per_identity"], views),
                              ("expressions", t["expressions_per_identity"], exprs)):
        if count is None and pool is None:
            raise _error(source, f"give {word}_per_identity (a count drawn per identity) or {word} "
                                 "(an explicit list)", name, f"{word}_per_identity")
        if count is not None and pool is not None and count > len(pool):
            raise _error(source, f"{count} exceeds the {len(pool)} {word} listed {list(pool)}", name,
                         f"{word}_per_identity")
    if t["prior_preset"] not in prior_cfg.PRESETS:
        raise _error(source, f"unknown prior preset {t['prior_preset']!r}; choose one of {sorted(prior_cfg.PRESETS)}",
                     name, "prior_preset")
    changes = _overrides(source, name, "prior_changes", s["prior_changes"], prior_cfg.PRESETS[t["prior_preset"]])
    config = AblationConfig(name=name, **{**t, "views": views, "expressions": exprs, "prior_changes": changes})
    images, identities, v, e = config.images, config.identities, config.n_views, config.n_expressions
    if images != identities * v * e:
        raise _error(source, f"budget mismatch: images={images} but identities x views x expressions per "
                             f"identity = {identities} x {v} x {e} = {identities * v * e}", name, "images")
    return config


def parse_spec(text: str, source: str = "<string>") -> AblationSpec:
    """Parse and validate a spec; every problem is a ``SpecError`` naming ``source``."""
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise SpecError(f"{source}: invalid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise _error(source, f"the spec must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}; "
                             f"got {type(doc).__name__}")
    if unknown := [k for k in doc if k not in TOP_LEVEL_KEYS]:
        raise _error(source, unknown_names(unknown, TOP_LEVEL_KEYS, "top-level key(s)"))
    if "version" not in doc:
        raise _error(source, f"missing (this reader understands version {VERSION})", key="version")
    if type(doc["version"]) is not int or doc["version"] != VERSION:
        raise _error(source, f"unsupported version {doc['version']!r}; expected {VERSION}", key="version")
    defaults = _mapping(source, None, "defaults", doc.get("defaults"))
    if unknown := [k for k in defaults if k not in CONFIG_KEYS]:
        raise _error(source, unknown_names(unknown, CONFIG_KEYS, "key(s)"), key="defaults")
    configs = doc.get("configurations")
    if not isinstance(configs, dict) or not configs:
        got = "missing" if configs is None else f"got {type(configs).__name__} {configs!r}"
        raise _error(source, f"must be a non-empty mapping of name -> settings; {got}", key="configurations")
    parsed = tuple(_parse_config(source, name, body, defaults) for name, body in configs.items())

    splits = _ids(source, None, "test_splits", doc.get("test_splits")) or ("test",)
    if bad := [s for s in splits if s not in SPLITS or s == TRAIN_SPLIT]:
        raise _error(source, f"held-out split(s) {bad} must be among {[s for s in SPLITS if s != TRAIN_SPLIT]}",
                     key="test_splits")
    preset_name = doc.get("fewshot_preset", "cpu")
    if not isinstance(preset_name, str) or preset_name not in fewshot_cfg.PRESETS:
        raise _error(source, f"unknown few-shot preset {preset_name!r}; choose one of {sorted(fewshot_cfg.PRESETS)}",
                     key="fewshot_preset")
    overrides = _overrides(source, None, "fewshot", doc.get("fewshot"), fewshot_cfg.PRESETS[preset_name])
    return AblationSpec(configurations=parsed, seeds=_seeds(source, doc.get("seeds")), fewshot=overrides,
                        fewshot_preset=preset_name, test_splits=splits, source=source,
                        digest=hashlib.sha256(text.encode("utf-8")).hexdigest())


def load_spec(path: str | Path) -> AblationSpec:
    try:
        return parse_spec(Path(path).read_text(encoding="utf-8"), source=str(path))
    except OSError as err:
        raise SpecError(f"{path}: cannot read the ablation spec: {err}") from err


def load_default_spec() -> AblationSpec:
    """The spec shipped with the package (``training/ablation/default.yaml``)."""
    return load_spec(DEFAULT_SPEC)
