"""Config loading: one YAML file, one section per service, environment overrides.

A field `port` of section `gateway` is overridden by `RAGMESH_GATEWAY_PORT`. Values from
the environment are parsed as YAML scalars, so `8080`, `true` and `1.5` keep their types.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

ENV_PREFIX = "RAGMESH_"
T = TypeVar("T")
# A DNS name (RFC 1123 labels): a Service name, a FQDN, localhost.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range; the message names the field."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def build(cls: type[T], values: Mapping[str, Any], section: str, env: bool = True) -> T:
    """Builds dataclass `cls` from `values` plus `RAGMESH_<SECTION>_<FIELD>` overrides (not
    `env`: `values` alone). Raises ConfigError naming the field for an unknown field or a
    value of the wrong type (scalars_of)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: must be a mapping of fields, not {type(values).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{section}: unknown field(s) {', '.join(unknown)}")
    merged = dict(values)
    for name in fields if env else ():
        raw = os.environ.get(f"{ENV_PREFIX}{section}_{name}".upper())
        if raw is not None:
            merged[name] = yaml.safe_load(raw)
    for name, (kind, check) in scalars_of(typing.cast(type, cls)).items():
        if name in merged:
            try:
                check.validate_python(merged[name])
            except pydantic.ValidationError as exc:
                # The value's type only, never the value: a misplaced secret stays unshown.
                got = type(merged[name]).__name__
                raise ConfigError(
                    f"{section}.{name}: must be {_KINDS[kind]}, not {got} "
                    f"({exc.errors()[0]['msg'].lower()})"
                ) from exc
    try:
        return cls(**merged)
    except TypeError as exc:
        raise ConfigError(f"{section}: {exc}") from exc


_KINDS = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text"}
# Strict: "false" is no bool, 1.0 no int, "20" no number; a float field takes an int.
_STRICT = pydantic.ConfigDict(strict=True, allow_inf_nan=False)


@functools.cache
def scalars_of(cls: type) -> dict[str, tuple[type, pydantic.TypeAdapter[Any]]]:
    """The fields of `cls` typed bool, int, float or str, each with pydantic's strict
    validator of its type (nested configs and collections are checked where they are
    built)."""
    hints = typing.get_type_hints(cls)
    return {
        name: (hint, pydantic.TypeAdapter(hint, config=_STRICT))
        for name, hint in hints.items()
        if hint in _KINDS
    }


def require(condition: bool, field: str, message: str) -> None:
    """Raises ConfigError naming `field` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def is_ip(host: str) -> bool:
    """Whether `host` is an IPv4 or IPv6 address (not a name)."""
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_host(host: str) -> bool:
    """Whether `host` is an IP address or a DNS name: no port, scheme or path."""
    if not isinstance(host, str):
        return False
    return is_ip(host) or (len(host) <= 253 and bool(_HOST_NAME.fullmatch(host)))
