"""Config loading: one YAML file, one section per service, environment overrides.

A field `port` of section `gateway` is overridden by `RAGMESH_GATEWAY_PORT`. Values from
the environment are parsed as YAML scalars, so `8080`, `true` and `1.5` keep their types.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

ENV_PREFIX = "RAGMESH_"
T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range; the message names the field."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def build(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """Builds dataclass `cls` from `values` plus `RAGMESH_<SECTION>_<FIELD>` overrides."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{section}: unknown field(s) {', '.join(unknown)}")
    merged = dict(values)
    for name in fields:
        raw = os.environ.get(f"{ENV_PREFIX}{section}_{name}".upper())
        if raw is not None:
            merged[name] = yaml.safe_load(raw)
    try:
        return cls(**merged)
    except TypeError as exc:
        raise ConfigError(f"{section}: {exc}") from exc


def require(condition: bool, field: str, message: str) -> None:
    """Raises ConfigError naming `field` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")
