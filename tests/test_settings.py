"""``training.settings``: the one validator of config overrides (ablation spec, ``--set``, Dagster run config).

Expected values are literals: nothing here is computed with the function under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import yaml

from training.prior.config import PRESETS
from training.settings import SettingsError, apply_overrides, check_changes, default_of, describe


@dataclass(frozen=True)
class Knobs:
    """A config with one field of each kind the real configs use, and an invariant."""

    steps: int = 10
    rate: float = 0.5
    enabled: bool = False
    mode: str = "fast"
    ks: tuple[int, ...] = (1, 3)
    limit: Optional[int] = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.limit is not None and self.limit < self.steps:
            raise ValueError("limit must be None or >= steps")


BASE = Knobs()


# ---------------------------------------------------------------- names


def test_unknown_field_names_the_source_and_the_closest_field() -> None:
    with pytest.raises(SettingsError) as info:
        apply_overrides(BASE, {"step": 3}, "spec.yaml: configuration 'c'")
    message = str(info.value)
    assert message.startswith("spec.yaml: configuration 'c': unknown Knobs field(s) 'step'")
    assert "(did you mean 'steps'?)" in message and "allowed: steps, rate, enabled, mode, ks, limit" in message
    assert info.value.field is None


def test_unknown_field_of_a_real_config_from_text() -> None:
    with pytest.raises(SettingsError, match=r"^--set: unknown PriorConfig field\(s\) 'rays_per_imag' "
                                            r"\(did you mean 'rays_per_image'\?\)"):
        apply_overrides(PRESETS["cpu"], {"rays_per_imag": "32"}, "--set", text=True)


def test_changes_must_be_a_mapping() -> None:
    with pytest.raises(SettingsError, match="must be a mapping, got list"):
        check_changes(Knobs, [("steps", 3)], "src")  # type: ignore[arg-type]


# ---------------------------------------------------------------- typed sources (YAML, JSON, Dagster)

YAML_BAD = [
    ("steps: 4.5", "steps must be an integer, got 4.5"),
    ("steps: 4.0", "steps must be an integer, got 4.0"),  # strict: no silent float -> int
    ("steps: true", "steps must be an integer, got True"),  # bool is an int subclass, refused all the same
    ("steps: '4'", "steps must be an integer, got '4' (a string: write it without quotes)"),
    ("rate: fast", "rate must be a number, got 'fast'"),
    ("rate: 1e-3", "rate must be a number, got '1e-3' (PyYAML reads 1e-3 as a string: write 1.0e-3)"),
    ("rate: .inf", "rate must be a finite number, got inf"),
    ("rate: .nan", "rate must be a finite number, got nan"),
    ("enabled: 1", "enabled must be true or false, got 1"),
    ("mode: 5", "mode must be a string, got 5"),
    ("ks: 3", "ks must be a list of integers, got 3"),
    ("ks: [1, x]", "ks must be a list of integers, got [1, 'x']"),
    ("limit: x", "limit must be an integer, got 'x'"),
]


@pytest.mark.parametrize(("text", "message"), YAML_BAD, ids=[t for t, _ in YAML_BAD])
def test_wrong_type_from_yaml_names_source_field_and_value(text: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        apply_overrides(BASE, yaml.safe_load(text), "spec.yaml")
    assert str(info.value) == f"spec.yaml: {message}"
    assert info.value.field == text.split(":")[0]
    assert info.value.problem == message[len(info.value.field) + 1:]


def test_typed_values_are_coerced_only_where_nothing_is_lost() -> None:
    got = apply_overrides(BASE, yaml.safe_load("{rate: 2, ks: [5, 7], enabled: true, limit: 20, mode: slow}"), "s")
    assert got == Knobs(steps=10, rate=2.0, enabled=True, mode="slow", ks=(5, 7), limit=20)
    assert type(got.rate) is float and type(got.ks) is tuple
    assert apply_overrides(BASE, {"limit": None}, "s").limit is None
    assert BASE == Knobs()  # the base is left alone


# ---------------------------------------------------------------- text sources (--set)

TEXT_OK = [
    ("steps", "128", 128),
    ("steps", " 7 ", 7),
    ("steps", "-3", -3),  # parses; the range is the invariant's business (below)
    ("rate", "1e-3", 0.001),
    ("rate", ".5", 0.5),
    ("rate", "3", 3.0),
    ("enabled", "true", True),
    ("enabled", "False", False),
    ("enabled", "1", True),
    ("enabled", "0", False),
    ("mode", "1.5", "1.5"),  # a string field takes the text as it is
    ("ks", "2,4", (2, 4)),
    ("ks", "9", (9,)),
    ("ks", "", ()),
]


@pytest.mark.parametrize(("name", "raw", "expected"), TEXT_OK, ids=[f"{n}={r}" for n, r, _ in TEXT_OK])
def test_text_is_parsed_into_the_field_type(name: str, raw: str, expected: object) -> None:
    typed = check_changes(Knobs, {name: raw}, "--set", text=True)
    assert typed == {name: expected} and type(typed[name]) is type(expected)


TEXT_BAD = [
    ("steps", "1.5", "steps must be an integer, got '1.5'"),
    ("steps", "many", "steps must be an integer, got 'many'"),
    ("steps", "1e3", "steps must be an integer, got '1e3'"),
    ("steps", "true", "steps must be an integer, got 'true'"),
    ("rate", "fast", "rate must be a number, got 'fast'"),
    ("rate", "inf", "rate must be a finite number, got 'inf'"),
    ("rate", "nan", "rate must be a finite number, got 'nan'"),
    ("enabled", "2", "enabled must be true or false, got '2'"),
    ("enabled", "maybe", "enabled must be true or false, got 'maybe'"),
    ("ks", "1,x", "ks must be a list of integers, got '1,x'"),
]


@pytest.mark.parametrize(("name", "raw", "message"), TEXT_BAD, ids=[f"{n}={r}" for n, r, _ in TEXT_BAD])
def test_text_that_does_not_parse_is_refused(name: str, raw: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        apply_overrides(BASE, {name: raw}, "--set", text=True)
    assert str(info.value) == f"--set: {message}" and info.value.field == name


def test_text_overrides_of_the_prior_config() -> None:
    got = apply_overrides(PRESETS["gpu"], {"iterations": "7", "lr": "1e-4", "backbone": "triplane"}, "--set",
                          text=True)
    assert (got.iterations, got.lr, got.backbone) == (7, 0.0001, "triplane")
    assert got.resolution == 256 and got.latent_dim == 128  # the rest is the gpu preset's
    with pytest.raises(SettingsError, match=r"^--set: iterations must be an integer, got '1\.5'$"):
        apply_overrides(PRESETS["cpu"], {"iterations": "1.5"}, "--set", text=True)


# ---------------------------------------------------------------- invariants


def test_the_dataclass_invariants_apply_after_the_types() -> None:
    with pytest.raises(SettingsError) as info:
        apply_overrides(BASE, {"steps": "0"}, "--set", text=True)
    assert str(info.value) == "--set: Knobs rejects {'steps': 0}: steps must be >= 1, got 0"
    with pytest.raises(SettingsError, match=r"^src: Knobs rejects \{'limit': 5\}: limit must be None or >= steps$"):
        apply_overrides(BASE, {"limit": 5}, "src")
    with pytest.raises(SettingsError, match=r"PriorConfig rejects \{'backbone': 'voxels'\}: backbone must be one of "
                                            r"anchored, triplane; got 'voxels'"):
        apply_overrides(PRESETS["cpu"], {"backbone": "voxels"}, "src")


def test_check_changes_leaves_invariants_to_apply_overrides() -> None:
    assert check_changes(BASE, {"steps": 0}) == {"steps": 0}
    assert isinstance(SettingsError("s", "p"), ValueError)  # callers catching ValueError keep working


def test_messages_without_a_source_have_no_prefix() -> None:
    with pytest.raises(SettingsError) as info:
        apply_overrides(BASE, {"steps": 0})
    assert str(info.value) == "Knobs rejects {'steps': 0}: steps must be >= 1, got 0"


# ---------------------------------------------------------------- helpers


def test_default_of_reads_the_dataclass() -> None:
    assert default_of(Knobs, "rate") == 0.5 and default_of(Knobs, "ks") == (1, 3)
    with pytest.raises(AttributeError, match="no field 'speed'"):
        default_of(Knobs, "speed")


@pytest.mark.parametrize(("annotation", "text"), [
    (int, "an integer"), (float, "a number"), (bool, "true or false"), (str, "a string"),
    (tuple[int, ...], "a list of integers"), (tuple[str, ...], "a list of strings"), (Optional[int], "an integer"),
    (dict[str, int], "a mapping")])
def test_describe(annotation: object, text: str) -> None:
    assert describe(annotation) == text
