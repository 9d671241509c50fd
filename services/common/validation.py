"""Checks shared by the planes that accept documents, filters and tenants.

Each raises InvalidArgument naming the offending field, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from services.common.errors import InvalidArgument

_DOCUMENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TENANT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_VALUE_CHARS = 256
MAX_ENTRIES = 32


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise InvalidArgument("tenant: must be 1-64 letters, digits or ._-", field="tenant")
    return tenant


def check_document_id(value: str, field: str) -> str:
    """1-128 letters, digits or ._:-, and not "." or ".." (a URL path cannot name those)."""
    if not _DOCUMENT_ID.match(value) or value in (".", ".."):
        raise InvalidArgument(
            f'{field}: must be 1-128 letters, digits or ._:-, not "." or ".." '
            f"(got {len(value)} characters)",
            field=field,
        )
    return value


def check_string_map(values: Mapping[str, str], field: str) -> dict[str, str]:
    """Metadata and filters: identifier keys, short printable values."""
    if len(values) > MAX_ENTRIES:
        raise InvalidArgument(f"{field}: at most {MAX_ENTRIES} entries", field=field)
    for key, value in values.items():
        if not _KEY.match(key):
            raise InvalidArgument(
                f"{field}: key {key[:64]!r} must be an identifier of at most 64 characters",
                field=f"{field}.{key[:64]}",
            )
        if len(value) > MAX_VALUE_CHARS or not value.isprintable():
            raise InvalidArgument(
                f"{field}.{key}: must be printable and at most {MAX_VALUE_CHARS} characters",
                field=f"{field}.{key}",
            )
    return dict(values)


def check_range(value: int, low: int, high: int, field: str) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{field}: must be {low}..{high} (got {value})", field=field)
    return value
