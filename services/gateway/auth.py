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
        """The tenant of the `x-api-key` or `authorization: Bearer` key in `metadata`."""
        key = ""
        for name, value in metadata:
            text = value.decode() if isinstance(value, bytes) else value
            if name == "x-api-key":
                key = text.strip()
            elif name == "authorization" and text[:7].lower() == "bearer ":
                key = text[7:].strip()
        if not key:
            raise Unauthenticated("missing API key: send x-api-key or authorization: Bearer")
        tenant = self._tenants.get(key_digest(key))
        if tenant is None:
            raise Unauthenticated("unknown API key")
        return tenant
