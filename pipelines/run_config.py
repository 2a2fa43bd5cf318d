"""Dagster run config -> the config dataclasses, through ``training.settings`` like every other source.

A ``dg.Config`` keeps typed fields (the launchpad shows and checks them) and mirrors
only the dataclass fields a run may change, under the same names, with their
defaults read from the dataclass (``training.settings.default_of``) or ``None``
meaning "the preset's". The asset builds its dataclass with ``from_run_config``,
so a bad value fails the run with the message the ablation spec and ``--set``
give, naming the asset's run config and the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

import dagster as dg

from training.settings import SettingsError, apply_overrides

T = TypeVar("T")


def mirrored(config: dg.Config, cls: type) -> dict[str, Any]:
    """The fields of ``config`` named like fields of the dataclass ``cls``; ``None`` (not set) left out."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: value for name in type(config).model_fields
            if name in names and (value := getattr(config, name)) is not None}


def from_run_config(base: T, changes: Mapping[str, Any], asset: str) -> T:
    """``base`` with ``changes`` (``apply_overrides``); a refusal is a ``dg.Failure`` naming the field."""
    try:
        return apply_overrides(base, changes, f"{asset} run config")
    except SettingsError as exc:
        raise dg.Failure(str(exc)) from None
