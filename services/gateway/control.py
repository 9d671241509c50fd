"""The control plane as a gateway uses it: who calls (keys), which tier answers (the routing
policy), whether the request may run (admission), what it cost (settlement, usage records,
metrics). Everything a request touches is in this process; the shared store is read and
written by background tasks (services/control/).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import (
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from services.config.control import ControlConfig
from services.control import metrics as control_metrics
from services.control.admission import MICRO, Admission, Charge, Reservation
from services.control.policy import PolicyFile, RollingP95, Route, TierHealth
from services.control.registry import ApiKey, Registry, key_digest
from services.control.store import Store
from services.control.usage import UsageLog, UsageRecord
from services.gateway import metrics
from services.gateway.values import HIT, Call

LOGGER = logging.getLogger(__name__)
_P95_EVERY_S = 0.5  # the guardrail's p95 is recomputed at most this often
_ADMITTED, _REFUSED = (metrics.ADMISSIONS.labels(result) for result in ("admitted", "refused"))


def credential(metadata: Iterable[tuple[str, str | bytes]], header: str) -> str:
    """The one credential in `metadata`: `header`'s value, or for x-api-key also
    `authorization: Bearer ...`. Raises Unauthenticated for none or more than one (which
    would leave the choice to the order of the headers)."""
    found = []
    for name, value in metadata:
        text = value.decode() if isinstance(value, bytes) else value
        if name == header:
            found.append(text.strip())
        elif header == "x-api-key" and name == "authorization" and text[:7].lower() == "bearer ":
            found.append(text[7:].strip())
    if len(set(found)) > 1:  # the same key in both headers is one credential
        hint = "x-api-key or authorization: Bearer" if header == "x-api-key" else header
        raise Unauthenticated(f"more than one credential: send one, as {hint}")
    if not found or not found[0]:
        hint = "x-api-key or authorization: Bearer" if header == "x-api-key" else header
        raise Unauthenticated(f"missing credential: send {hint}")
    return found[0]


@dataclass
class _Latency:
    """A tier's rolling p95 time to first token, recomputed at most every _P95_EVERY_S."""

    window: RollingP95 = field(default_factory=RollingP95)
    p95_ms: float | None = None
    at: float = 0.0

    def value(self, now: float) -> float | None:
        if now - self.at >= _P95_EVERY_S:
            self.p95_ms, self.at = self.window.value(now), now
        return self.p95_ms


@dataclass(frozen=True)
class Spent:
    """What a request used: tokens of the tier that served it (0 for a cached answer)."""

    tier: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_status: str
    outcome: str  # ok, cancelled, failed


class Control:
    def __init__(
        self, config: ControlConfig, region: str, policy_file: Path, gateway_id: str = ""
    ) -> None:
        self.config = config
        self.region = region
        self.store = Store(config.store_url(), config.store_timeout_s, config.store_url_shown())
        self.registry = Registry(self.store, config.registry_refresh_s)
        # One id per gateway address: a gateway that restarts reports as itself, so what
        # its leases held and reserved before the crash is settled, not stranded.
        self.admission = Admission(self.store, config, gateway_id)
        self.usage = UsageLog(self.store)
        self.policy = PolicyFile(policy_file)
        self._latency: dict[str, _Latency] = {}
        self._routed: dict[tuple[str, str], Any] = {}  # ROUTING's children, by tier and reason
        self._spent: dict[str, tuple[Any, Any, Any]] = {}  # TOKENS' and COST's, by tier
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, seed: Mapping[str, str], wait_s: float = 10.0) -> None:
        """Seeds the mesh config's tenants, reads the registry (for up to `wait_s`; requests
        get UNAVAILABLE until it is read), and starts the background tasks."""
        if not self.config.enabled:
            self.registry.load(seed)
            return
        deadline = time.monotonic() + wait_s
        while True:
            try:
                await self.registry.seed(seed)
                await self.registry.refresh()
                control_metrics.STORE_UP.set(1)  # before any request: 0 until set
                break
            except Unavailable as exc:
                if time.monotonic() > deadline:
                    LOGGER.error("control store not reached at start: %s", exc.message)
                    control_metrics.STORE_UP.set(0)
                    break
                await asyncio.sleep(0.2)
        self._tasks = [
            asyncio.ensure_future(self.registry.run()),
            asyncio.ensure_future(self.admission.run()),
            asyncio.ensure_future(self.usage.run(self.config.usage_flush_s)),
            asyncio.ensure_future(self._reload_policy()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.config.enabled:
            await self.admission.release()  # report what was spent, give allowance back
            with contextlib.suppress(Unavailable):
                await self.usage.flush()
        await self.store.close()

    async def _reload_policy(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.policy.reload()

    # -- per request ----------------------------------------------------------------------

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> ApiKey:
        """The valid key the call carries; Unauthenticated otherwise (401)."""
        return self.registry.authenticate(credential(metadata, "x-api-key"))

    def check_admin(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """The admin credential (`x-admin-key`): Unauthenticated without one, PermissionDenied
        for a wrong one or when no admin credential is configured."""
        if not self.config.enabled:
            raise FailedPrecondition("the control plane is off (control.enabled false)")
        digest = key_digest(credential(metadata, "x-admin-key"))
        expected = self.config.admin_key_digest
        if not expected or not hmac.compare_digest(digest, expected):
            raise PermissionDenied("not the admin credential")

    def route(
        self,
        tenant: str,
        priority: str,
        tier: str,
        breaker_open: Callable[[str], bool],
        *,
        counted: bool = True,
    ) -> Route:
        """The routing policy's tier for a request of `tenant` now, and why; each tier's
        health is read only if a rule asks for it. `counted`: in the routing metric (an
        explanation is not)."""
        now = time.monotonic()
        route = self.policy.policy.route(
            tenant,
            priority,
            tier,
            lambda name: TierHealth(self._p95(name, now), breaker_open(name)),
            self.over_soft_cap(tenant),
        )
        routed = self._routed.get((route.tier, route.reason))
        if not counted:
            return route
        if routed is None:
            routed = metrics.ROUTING.labels(route.tier, route.reason)
            self._routed[(route.tier, route.reason)] = routed
        routed.inc()
        return route

    def _p95(self, tier: str, now: float) -> float | None:
        latency = self._latency.get(tier)
        return latency.value(now) if latency else None

    def over_soft_cap(self, tenant: str) -> bool:
        return self.admission.over_soft_cap(self.registry.tenant(tenant))

    def health(
        self, tiers: Iterable[str], breaker_open: Callable[[str], bool]
    ) -> dict[str, TierHealth]:
        """What the latency guardrail sees of each tier now."""
        now = time.monotonic()
        return {name: TierHealth(self._p95(name, now), breaker_open(name)) for name in tiers}

    def first_token(self, tier: str, seconds: float) -> None:
        latency = self._latency.setdefault(tier, _Latency())
        latency.window.add(seconds * 1000, time.monotonic())

    def cost_micro_usd(self, tier: str, input_tokens: int, output_tokens: int) -> int:
        return math.ceil(self.policy.policy.price(tier).cost(input_tokens, output_tokens) * MICRO)

    async def admit(self, call: Call, worst: Charge) -> Reservation:
        """Reserves `worst` for the call's key and tenant; QuotaExceeded (429) if a cap
        refuses it, Unavailable under `offline: refuse` with the store away."""
        assert call.key is not None
        tenant = self.registry.tenant(call.tenant)
        try:
            reservation = await self.admission.admit(call.key, tenant, worst)
        except Exception:
            _REFUSED.inc()
            raise
        _ADMITTED.inc()
        return reservation

    async def admit_call(self, call: Call) -> None:
        """Admits a request that spends no tokens (search, ingest, delete)."""
        reservation = await self.admit(call, Charge(requests=1))
        self.admission.settle(reservation, Charge(requests=1))

    def settle(self, call: Call, reservation: Reservation, spent: Spent, routing: str) -> float:
        """Settles the reservation with what was spent, records the usage, counts tokens and
        cost; returns the cost in US dollars."""
        cost = 0.0
        if spent.cache_status != HIT:
            cost = self.policy.policy.price(spent.tier).cost(
                spent.input_tokens, spent.output_tokens
            )
        tokens = 0 if spent.cache_status == HIT else spent.input_tokens + spent.output_tokens
        self.admission.settle(reservation, Charge(1, tokens, math.ceil(cost * MICRO)))
        tenant = call.tenant if self.config.tenant_metrics else ""
        if spent.cache_status != HIT:
            counted = self._spent.get(spent.tier)
            if counted is None:
                counted = self._spent[spent.tier] = (
                    metrics.TOKENS.labels(spent.tier, "input"),
                    metrics.TOKENS.labels(spent.tier, "output"),
                    metrics.COST.labels(spent.tier),
                )
            counted[0].inc(spent.input_tokens)
            counted[1].inc(spent.output_tokens)
            counted[2].inc(cost)
            if tenant:
                metrics.TENANT_TOKENS.labels(tenant, spent.tier).inc(tokens)
                metrics.TENANT_COST.labels(tenant, spent.tier).inc(cost)
        self.usage.record(
            UsageRecord(
                tenant=call.tenant,
                key_id=call.key.id if call.key else "",
                tier=spent.tier,
                model=spent.model,
                input_tokens=spent.input_tokens,
                output_tokens=spent.output_tokens,
                cost_usd=cost,
                cache_status=spent.cache_status,
                region=self.region,
                trace_id=call.trace_id,
                routing_reason=routing,
                outcome=spent.outcome,
                ts_ms=int(time.time() * 1000),
            )
        )
        return cost

    def state(self) -> tuple[bool, str]:
        """(healthy, detail) of the shared store as this gateway sees it."""
        stale = time.monotonic() - self.registry.loaded_at
        fresh = self.registry.loaded_at and stale < 5 * self.config.registry_refresh_s + 2
        if self.admission.online and fresh:
            return True, "leases from the store"
        rule = (
            f"offline: admitting up to {self.config.offline_fraction:.0%} of each cap per window"
            if self.config.offline == "allow"
            else "offline: refusing once leases are spent"
        )
        return False, f"unreachable; {rule}"
