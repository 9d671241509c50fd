"""Tenants and their API keys: the records in the shared store, and each gateway's copy.

A key is `rmk-<id>-<secret>`, random (`secrets`), shown once when it is made; the store and
the gateways keep its sha256 digest, compared with `hmac.compare_digest`. A gateway reads
the registry's version every `registry_refresh_s` and reloads on a change, so a revoked key
is refused in every region within that plus one read. Requests never wait on the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from services.common.validation import check_string_map
from services.control.store import KEYS, TENANTS, Store

LOGGER = logging.getLogger(__name__)
METRICS = ("requests", "tokens", "cost_usd")
WINDOWS = ("day", "month")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_CAP = 1e12  # any budget or limit above this is a mistake, not a plan


def key_digest(key: str) -> str:
    """The sha256 hex digest the registry keeps of an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Budget:
    """A tenant's allowance of `metric` (requests, tokens, cost_usd) per UTC `window` (day,
    month): past `soft` it alerts and may move to cheaper tiers; `hard` refuses. 0: none."""

    metric: str
    window: str
    hard: float = 0.0
    soft: float = 0.0

    def check(self, name: str) -> Budget:
        if self.metric not in METRICS:
            raise InvalidArgument(f"{name}.metric: must be one of {', '.join(METRICS)}", field=name)
        if self.window not in WINDOWS:
            raise InvalidArgument(f"{name}.window: must be one of {', '.join(WINDOWS)}", field=name)
        for value in (self.hard, self.soft):
            if not (math.isfinite(value) and 0 <= value <= MAX_CAP):
                raise InvalidArgument(f"{name}: caps must be 0..{MAX_CAP:g} (0: none)", field=name)
        if self.hard and self.soft > self.hard:
            raise InvalidArgument(f"{name}: need soft <= hard", field=name)
        return self


@dataclass(frozen=True)
class Tenant:
    """A tenant: each of its keys may send `requests_per_second` and `tokens_per_minute`
    (0: no limit); the tenant as a whole spends within `budgets`."""

    name: str
    requests_per_second: int = 0
    tokens_per_minute: int = 0
    budgets: tuple[Budget, ...] = ()
    created_ms: int = 0

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Tenant:
        budgets = tuple(Budget(**b) for b in record.get("budgets", ()))
        return cls(**{**record, "budgets": budgets})

    def check(self) -> Tenant:
        check_name(self.name, "name")
        for limit in (self.requests_per_second, self.tokens_per_minute):
            if not 0 <= limit <= MAX_CAP:
                raise InvalidArgument(
                    f"limits: must be 0..{MAX_CAP:g} (0: no limit)", field="limits"
                )
        seen = set()
        for i, budget in enumerate(self.budgets):
            budget.check(f"budgets[{i}]")
            if (budget.metric, budget.window) in seen:
                raise InvalidArgument(
                    f"budgets[{i}]: a second {budget.metric} budget per {budget.window}",
                    field=f"budgets[{i}]",
                )
            seen.add((budget.metric, budget.window))
        return self


@dataclass(frozen=True)
class ApiKey:
    """A key's record: never the key itself. `expires_ms`, `revoked_ms`: 0 for never."""

    id: str
    tenant: str
    digest: str
    labels: dict[str, str] = field(default_factory=dict)
    created_ms: int = 0
    expires_ms: int = 0
    revoked_ms: int = 0

    def refusal(self, at_ms: int) -> str:
        """Why the key is refused at `at_ms`; "" when it is valid."""
        if self.revoked_ms and self.revoked_ms <= at_ms:
            return "revoked API key"
        if self.expires_ms and self.expires_ms <= at_ms:
            return "expired API key"
        return ""


def check_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{what}: must be 1-64 of a-z, 0-9, _ and -, starting with a letter or digit",
            field=what,
        )
    return name


class Registry:
    """The key registry: writes go to the store; reads come from this gateway's copy."""

    def __init__(self, store: Store, refresh_s: float) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._version = -1
        self._by_digest: dict[str, ApiKey] = {}
        self._tenants: dict[str, Tenant] = {}
        self.loaded_at = 0.0  # time.monotonic() of the last successful read; 0: never

    # -- a gateway's copy ---------------------------------------------------------------------

    def authenticate(self, key: str) -> ApiKey:
        """The record of a valid `key`. Raises Unauthenticated for an unknown, revoked or
        expired key (401), and Unavailable before the registry was ever read."""
        if not self.loaded_at:
            raise Unavailable("the key registry is not loaded yet")
        digest = key_digest(key)
        record = self._by_digest.get(digest)
        if record is None or not hmac.compare_digest(record.digest, digest):
            raise Unauthenticated("unknown API key")
        refusal = record.refusal(now_ms())
        if refusal:
            raise Unauthenticated(refusal)
        return record

    def tenant(self, name: str) -> Tenant:
        """A tenant by name; one the copy does not hold has no limits or budgets."""
        return self._tenants.get(name) or Tenant(name)

    def load(self, api_keys: Mapping[str, str]) -> None:
        """Fills the copy from the mesh config's tenants alone (the control plane off)."""
        self._tenants = {tenant: Tenant(tenant) for tenant in api_keys}
        self._by_digest = {
            digest: ApiKey(id=f"seed-{tenant}", tenant=tenant, digest=digest)
            for tenant, digest in api_keys.items()
        }
        self.loaded_at = time.monotonic()

    async def refresh(self) -> bool:
        """Reloads the copy if the registry changed; True if it did. Raises Unavailable."""
        version = await self.store.version()
        if version == self._version:
            self.loaded_at = time.monotonic()
            return False
        tenants = await self.store.records(TENANTS)
        keys = await self.store.records(KEYS)
        self._tenants = {name: Tenant.from_record(r) for name, r in tenants.items()}
        self._by_digest = {r["digest"]: ApiKey(**r) for r in keys.values()}
        self._version = version
        self.loaded_at = time.monotonic()
        return True

    async def run(self) -> None:
        """Refreshes every refresh_s until cancelled; an unreachable store keeps the copy."""
        failing = False
        while True:
            try:
                await self.refresh()
                if failing:
                    LOGGER.warning("key registry read again")
                failing = False
            except Unavailable as exc:
                if not failing:  # once per outage, not every refresh
                    LOGGER.warning("key registry not refreshed, the copy serves: %s", exc.message)
                failing = True
            except (TypeError, ValueError, KeyError) as exc:  # a record this version cannot read
                LOGGER.error("key registry not refreshed, the copy serves: bad record: %r", exc)
                failing = True
            await asyncio.sleep(self.refresh_s)

    # -- writes (the admin API) -------------------------------------------------------------

    async def seed(self, api_keys: Mapping[str, str]) -> None:
        """Tenants and key digests from the mesh config (`gateway.api_keys`), unless the
        store holds them already: every gateway of every region may seed the same ones."""
        for tenant, digest in api_keys.items():
            await self.store.put(
                TENANTS, tenant, asdict(Tenant(tenant, created_ms=now_ms())), new=True
            )
            record = ApiKey(id=f"seed-{tenant}", tenant=tenant, digest=digest, created_ms=now_ms())
            await self.store.put(KEYS, record.id, asdict(record), new=True)

    async def put_tenant(self, tenant: Tenant, *, new: bool) -> Tenant:
        """Creates (`new`; AlreadyExists if it exists) or replaces a tenant's limits and
        budgets (NotFound if it does not exist)."""
        tenant.check()
        old = await self.store.record(TENANTS, tenant.name)
        if new and old is not None:
            raise AlreadyExists(f"name: tenant {tenant.name!r} exists", field="name")
        if not new and old is None:
            raise NotFound(f"name: no tenant {tenant.name!r}", field="name")
        created = now_ms() if old is None else int(old.get("created_ms", 0))
        tenant = replace(tenant, created_ms=created)
        await self.store.put(TENANTS, tenant.name, asdict(tenant), new=False)
        return tenant

    async def get_tenant(self, name: str) -> Tenant:
        record = await self.store.record(TENANTS, check_name(name, "tenant"))
        if record is None:
            raise NotFound(f"tenant: no tenant {name!r}", field="tenant")
        return Tenant.from_record(record)

    async def tenants(self) -> list[Tenant]:
        records = await self.store.records(TENANTS)
        return sorted((Tenant.from_record(r) for r in records.values()), key=lambda t: t.name)

    async def create_key(
        self, tenant: str, labels: Mapping[str, str], expires_ms: int = 0
    ) -> tuple[str, ApiKey]:
        """A new key for `tenant`: (the key, shown once; its record)."""
        await self.get_tenant(tenant)
        labels = check_string_map(labels, "labels")
        if expires_ms and expires_ms <= now_ms():
            raise InvalidArgument("expires: must be in the future", field="expires")
        key_id = secrets.token_hex(6)
        key = f"rmk-{key_id}-{secrets.token_urlsafe(24)}"
        record = ApiKey(
            id=key_id,
            tenant=tenant,
            digest=key_digest(key),
            labels=labels,
            created_ms=now_ms(),
            expires_ms=expires_ms,
        )
        await self.store.put(KEYS, key_id, asdict(record), new=True)
        return key, record

    async def key(self, tenant: str, key_id: str) -> ApiKey:
        """Key `key_id` of `tenant` (NotFound for another tenant's: no tenant learns of
        another's keys)."""
        record = await self.store.record(KEYS, key_id)
        if record is None or record["tenant"] != tenant:
            raise NotFound(f"key_id: tenant {tenant!r} has no key {key_id!r}", field="key_id")
        return ApiKey(**record)

    async def keys(self, tenant: str) -> list[ApiKey]:
        await self.get_tenant(tenant)
        records = await self.store.records(KEYS)
        mine = (ApiKey(**r) for r in records.values() if r["tenant"] == tenant)
        return sorted(mine, key=lambda k: (k.created_ms, k.id))

    async def revoke(self, tenant: str, key_id: str, at_ms: int = 0) -> ApiKey:
        """Revokes a key now, or at `at_ms` (a rotation's grace)."""
        record = await self.key(tenant, key_id)
        when = at_ms or now_ms()
        if record.revoked_ms and record.revoked_ms <= when:
            return record
        record = replace(record, revoked_ms=when)
        await self.store.put(KEYS, key_id, asdict(record), new=False)
        return record

    async def rotate(self, tenant: str, key_id: str, grace_ms: int) -> tuple[str, ApiKey]:
        """A new key with the old one's labels and expiry; the old one is revoked after
        `grace_ms` (0: now)."""
        old = await self.key(tenant, key_id)
        refusal = old.refusal(now_ms())
        if refusal:  # a dead key has no users to keep: make a new one
            raise FailedPrecondition(f"key_id: a {refusal} cannot be rotated", field="key_id")
        key, record = await self.create_key(tenant, old.labels, old.expires_ms)
        await self.revoke(tenant, key_id, now_ms() + grace_ms)
        return key, record
