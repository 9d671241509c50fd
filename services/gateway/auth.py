"""API key -> tenant. The gateway holds only sha256 digests of keys."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from services.common.errors import Unauthenticated


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, api_keys: Mapping[str, str]) -> None:
        self._tenants = {digest: tenant for tenant, digest in api_keys.items()}

    def tenant(self, metadata: Iterable[tuple[str, str | bytes]]) -> str:
        """The tenant of the `x-api-key` or `authorization: Bearer` key in `metadata`.

        Raises Unauthenticated for no key, an unknown one, or more than one (which would
        leave the choice to the order of the headers)."""
        keys = []
        for name, value in metadata:
            text = value.decode() if isinstance(value, bytes) else value
            if name == "x-api-key":
                keys.append(text.strip())
            elif name == "authorization" and text[:7].lower() == "bearer ":
                keys.append(text[7:].strip())
        if len(keys) > 1:
            raise Unauthenticated("more than one API key: send one x-api-key or authorization")
        key = keys[0] if keys else ""
        if not key:
            raise Unauthenticated("missing API key: send x-api-key or authorization: Bearer")
        tenant = self._tenants.get(key_digest(key))
        if tenant is None:
            raise Unauthenticated("unknown API key")
        return tenant
