"""Admission: every request reserves its worst case against each cap before any work, and
settles with its real usage when it ends. Caps live in the shared store; a gateway spends
from local leases.

A lease is a slice of one counter's cap (`lease_fraction` of it, at least one unit) taken
from the store before it is spent; reservations and settlements touch only the lease, and a
background task reports what was spent and takes the next slice before the lease runs dry.
While the store is reachable a cap holds exactly: everything admitted came out of the
counter. A counter this gateway has not used in the current window, or a lease a burst
emptied, waits for one take (coalesced for all requests that need it); steady traffic
never does. Allowance left in a lease goes back when the lease expires (`lease_ttl_s`).

Store unreachable: `offline: allow` admits from what the lease holds plus, while the store
is away, F = ceil(cap x offline_fraction) once per window; `refuse` answers UNAVAILABLE once
the lease is spent. The overshoot
bound (docs/control-plane.md): per counter and window, at most G * (max(L, R) + F) over the
cap, for G gateways, lease size L, the largest single reservation R and offline allowance F.

Windows are fixed, by the gateway's UTC clock: second, minute, day, month (as Envoy's
ratelimit service counts: github.com/envoyproxy/ratelimit, per unit).
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import secrets
import time
from dataclasses import dataclass, field

from services.common.errors import QuotaExceeded, Unavailable
from services.config.control import ControlConfig
from services.control import metrics
from services.control.registry import ApiKey, Tenant
from services.control.store import Store, Taken

LOGGER = logging.getLogger(__name__)
MICRO = 1_000_000  # costs are counted in millionths of a US dollar
_TICK_S = 0.05
# A lease the cap left short is asked again at most this often: refusals under a spent cap
# cost the shared store at most this many takes a second per lease and gateway.
RETAKE_S = 0.05


@dataclass(frozen=True)
class Charge:
    """A request's usage, or its worst case: requests, tokens, cost in micro-USD."""

    requests: int = 0
    tokens: int = 0
    cost_micro_usd: int = 0

    def of(self, metric: str) -> int:
        if metric == "requests":
            return self.requests
        return self.tokens if metric == "tokens" else self.cost_micro_usd


@dataclass(frozen=True)
class Counter:
    """One cap in one window: `cap` (-1: none, a soft cap only), `soft` (0: none)."""

    store_key: str
    subject: str  # as QuotaFailure names it: "key:<id>" or "tenant:<name>"
    description: str  # "requests per second", "cost_usd per day"
    metric: str
    cap: int
    soft: int
    window_end: float  # epoch seconds
    window_s: float


def _windows(kind: str, now: float) -> tuple[str, float, float]:
    """(id, end, length) of the UTC window of `kind` holding `now`."""
    if kind == "second":
        return str(int(now)), math.floor(now) + 1.0, 1.0
    if kind == "minute":
        return str(int(now // 60)), (now // 60 + 1) * 60, 60.0
    t = time.gmtime(now)
    if kind == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return time.strftime("%Y%m%d", t), start + 86400.0, 86400.0
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    end = calendar.timegm((year, month, 1, 0, 0, 0))
    return time.strftime("%Y%m", t), float(end), float(end - start)


def counters(key: ApiKey, tenant: Tenant, now: float) -> list[Counter]:
    """The caps a request with `key` is admitted against at `now`."""
    found = []
    per_key = (
        ("requests", "second", tenant.requests_per_second),
        ("tokens", "minute", tenant.tokens_per_minute),
    )
    for metric, kind, cap in per_key:
        if cap:
            wid, end, length = _windows(kind, now)
            found.append(
                Counter(
                    f"ragmesh:{{k:{key.id}}}:{metric}:{kind}:{wid}",
                    f"key:{key.id}",
                    f"{metric} per {kind}",
                    metric,
                    int(cap),
                    0,
                    end,
                    length,
                )
            )
    for budget in tenant.budgets:
        scale = MICRO if budget.metric == "cost_usd" else 1
        wid, end, length = _windows(budget.window, now)
        found.append(
            Counter(
                f"ragmesh:{{t:{tenant.name}}}:{budget.metric}:{budget.window}:{wid}",
                f"tenant:{tenant.name}",
                f"{budget.metric} per {budget.window}",
                budget.metric,
                round(budget.hard * scale) if budget.hard else -1,
                round(budget.soft * scale),
                end,
                length,
            )
        )
    return found


@dataclass
class _Lease:
    """This gateway's slice of one counter. In the store, its `held` equals
    allowance + reserved + pending (until pending is reported)."""

    counter: Counter
    size: int
    allowance: int = 0
    reserved: int = 0
    pending: int = 0  # spent, not yet reported
    spent_seen: int = 0  # the counter's spent, all gateways, at the last take
    expires: float = 0.0  # time.monotonic(); its allowance is void after
    dry: bool = False  # the last take got less than it asked: the cap is reached
    dry_at: float = 0.0  # time.monotonic() of that take
    offline: bool = False  # the last take failed: the store is unreachable
    offline_granted: bool = False
    offline_left: int = 0  # what the offline rule still allows this window
    offline_at: float = 0.0  # time.monotonic() of the last failed take
    need: int = 0  # the largest amount a waiting request needs
    taking: asyncio.Task[None] | None = None
    used: bool = False  # a request reserved from it


@dataclass
class Reservation:
    """What an admitted request holds until it settles."""

    charge: Charge
    leases: list[_Lease] = field(default_factory=list)
    settled: bool = False


class Admission:
    def __init__(self, store: Store, config: ControlConfig, gateway_id: str = "") -> None:
        self.store = store
        self.config = config
        self.gateway_id = gateway_id or secrets.token_hex(8)
        self._leases: dict[str, _Lease] = {}
        self._soft: dict[str, list[_Lease]] = {}  # by tenant: leases of budgets with a soft cap
        self._released = False  # shutting down: takes give allowance back
        self._second = 0
        self._counted: dict[tuple[str, int], tuple[Tenant, list[Counter]]] = {}
        self.waits = 0  # requests that waited for a take (a metric, and the bench's figure)

    @property
    def online(self) -> bool:
        return not any(lease.offline for lease in self._leases.values())

    def _counters(self, key: ApiKey, tenant: Tenant) -> list[Counter]:
        """counters(), computed once a second per key and tenant record."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._counted = second, {}
        cache_key = (key.id, id(tenant))
        found = self._counted.get(cache_key)
        if found is None or found[0] is not tenant:
            found = self._counted[cache_key] = (tenant, counters(key, tenant, now))
        return found[1]

    def _lease(self, counter: Counter) -> _Lease:
        lease = self._leases.get(counter.store_key)
        if lease is None:
            lease = self._leases[counter.store_key] = _Lease(counter, self._size(counter))
            if counter.soft:
                tenant = counter.subject.removeprefix("tenant:")
                self._soft.setdefault(tenant, []).append(lease)
        elif lease.counter != counter:  # the tenant's caps changed: they apply at once
            if counter.soft and not lease.counter.soft:
                self._soft.setdefault(counter.subject.removeprefix("tenant:"), []).append(lease)
            elif lease.counter.soft and not counter.soft:
                self._unsoft(lease)
            if counter.cap != lease.counter.cap:  # taken under the old cap: ask under the new
                lease.allowance = 0
            lease.counter, lease.size, lease.dry = counter, self._size(counter), False
        return lease

    def _size(self, counter: Counter) -> int:
        """A lease's size: lease_fraction of the cap, at least one unit (0: no cap)."""
        if counter.cap <= 0:
            return 0
        return max(1, math.ceil(counter.cap * self.config.lease_fraction))

    def _drop(self, store_key: str) -> None:
        lease = self._leases.pop(store_key)
        if lease.counter.soft:
            self._unsoft(lease)

    def _unsoft(self, lease: _Lease) -> None:
        tenant = lease.counter.subject.removeprefix("tenant:")
        self._soft[tenant].remove(lease)
        if not self._soft[tenant]:
            del self._soft[tenant]

    async def admit(self, key: ApiKey, tenant: Tenant, worst: Charge) -> Reservation:
        """Reserves `worst` against every cap of `key` and `tenant`, or raises
        QuotaExceeded (naming the cap and when to retry) or, with `offline: refuse` and the
        store unreachable, Unavailable. Nothing is held after a refusal."""
        if self._released:
            raise Unavailable("the gateway is shutting down: ask again")
        needs = [(self._lease(c), worst.of(c.metric)) for c in self._counters(key, tenant)]
        while True:
            now = time.monotonic()
            lacking = None
            for lease, amount in needs:
                if lease.counter.cap >= 0 and amount > 0:
                    if lease.expires < now:
                        lease.allowance = 0  # a lease not renewed in time is void
                    if lease.allowance + self._offline_left(lease) < amount:
                        lacking = (lease, amount)
                        break
            if lacking is None:
                for lease, amount in needs:
                    if lease.counter.cap >= 0:
                        lease.allowance -= amount
                        if lease.allowance < 0:  # the rest from the offline allowance
                            lease.offline_left += lease.allowance
                            lease.allowance = 0
                    lease.reserved += amount
                    lease.used = True
                return Reservation(worst, [lease for lease, _ in needs])
            lease, amount = lacking
            just_dry = lease.dry and now - lease.dry_at < RETAKE_S and not lease.offline
            if self._exhausted(lease, amount) or just_dry:
                self._refuse(lease, amount)
            if not lease.offline:  # a store known to be down is not waited on
                self.waits += 1
                metrics.LEASE_WAITS.inc()
                lease.need = max(lease.need, amount)
                await self._take(lease)
            if lease.offline:
                self._offline(lease)
            if self._released:
                raise Unavailable("the gateway is shutting down: ask again")
            if lease.allowance + self._offline_left(lease) >= amount:
                continue
            if lease.dry or lease.offline:
                self._refuse(lease, amount)

    @staticmethod
    def _offline_left(lease: _Lease) -> int:
        """The offline allowance: only while the store is away."""
        return lease.offline_left if lease.offline else 0

    @staticmethod
    def _exhausted(lease: _Lease, amount: int) -> bool:
        """Whether `amount` cannot fit the cap this window whatever comes back: more than the
        cap, or more than what is not spent already (spending never comes back)."""
        spent = lease.spent_seen + lease.pending
        return amount > lease.counter.cap or spent + amount > lease.counter.cap

    def _refuse(self, lease: _Lease, amount: int) -> None:
        c = lease.counter
        # Spent to the cap: the window's end. Else allowance in other gateways' leases may
        # come back: at the latest when they expire.
        window_left = c.window_end - time.time()
        exhausted = self._exhausted(lease, amount) and not lease.offline
        retry_s = window_left if exhausted else min(window_left, self.config.lease_ttl_s)
        retry_s = max(retry_s, 0.001)
        if lease.offline and self.config.offline == "refuse":
            raise Unavailable("control store unreachable and this gateway's lease is spent")
        why = (
            "this gateway's offline allowance is spent (control store unreachable)"
            if lease.offline
            else f"exhausted (this request needs {amount} of a cap of {c.cap})"
        )
        raise QuotaExceeded(
            f"{c.subject}: {c.description} {why}",
            subject=c.subject,
            description=c.description,
            retry_after_s=retry_s,
        )

    def _offline(self, lease: _Lease) -> None:
        """The store is unreachable: the offline rule's allowance, F = ⌈cap x
        offline_fraction⌉, once per window, kept until the window ends."""
        if self.config.offline == "allow" and not lease.offline_granted:
            lease.offline_granted = True
            lease.offline_left = math.ceil(lease.counter.cap * self.config.offline_fraction)

    def settle(self, reservation: Reservation, actual: Charge) -> None:
        """Replaces the reservation with `actual` usage (local; reported in the background)."""
        if reservation.settled:
            return
        reservation.settled = True
        for lease in reservation.leases:
            reserved, spent = (
                reservation.charge.of(lease.counter.metric),
                actual.of(lease.counter.metric),
            )
            lease.reserved -= reserved
            lease.pending += spent
            if lease.counter.cap >= 0:
                # What the worst case did not need goes back to the lease, up to its size:
                # the rest returns to the cap with the next take (so a lease never holds more
                # than max(size, one request), the overshoot bound's L).
                returned = lease.allowance + reserved - spent
                lease.allowance = min(returned, max(lease.size, lease.allowance))

    def over_soft_cap(self, tenant: Tenant) -> bool:
        """Whether a budget of `tenant` is past its soft cap (as of the last take)."""
        for lease in self._soft.get(tenant.name, ()):
            if lease.spent_seen + lease.pending + lease.reserved >= lease.counter.soft:
                return True
        return False

    async def _take(self, lease: _Lease) -> None:
        """One take for `lease`, shared by every request waiting on it."""
        if lease.taking is None or lease.taking.done():
            lease.taking = asyncio.ensure_future(self._take_now(lease))
        await asyncio.shield(lease.taking)

    async def _take_now(self, lease: _Lease) -> None:
        c = lease.counter
        if lease.expires < time.monotonic():
            lease.allowance = 0  # void here, and so in the store, which expires it later
        # A lease never holds more than its size or the one request that needs more: what a
        # gateway cut off from the store may have spent unreported (docs/control-plane.md).
        most = max(lease.size, lease.need)
        want = max(most - lease.allowance, 0) if c.cap >= 0 and not self._released else 0
        lease.need = 0
        spent = lease.pending
        reported = 0 if self._released else max(lease.allowance, 0)
        started = time.monotonic()
        window_left = max(c.window_end - time.time(), 0.0)
        try:
            taken = await self.store.take(
                c.store_key,
                self.gateway_id,
                cap=c.cap,
                want=want,
                spent=spent,
                reserved=lease.reserved,
                allowance=reported,
                lease_ttl_ms=int(self.config.lease_ttl_s * 1000),
                counter_ttl_s=int(window_left + 2 * self.config.lease_ttl_s + 60),
            )
        except Unavailable:
            lease.offline, lease.offline_at = True, time.monotonic()
            metrics.STORE_TAKES.labels("failed").inc()
            metrics.STORE_UP.set(0)
            return
        metrics.STORE_TAKES.labels("ok").inc()
        metrics.STORE_UP.set(1)
        lease.offline_left = 0  # the store is back: its leases again, not the offline rule
        soft = c.soft and lease.spent_seen < c.soft <= taken.spent
        if soft:
            metric, window = c.description.split(" per ")
            metrics.SOFT_CAP.labels(metric, window).inc()
            LOGGER.warning("%s: %s past its soft cap of %d", c.subject, c.description, c.soft)
        lease.offline = False
        lease.pending -= spent
        if lease.counter.cap != c.cap:  # the cap changed meanwhile: what it granted is void
            taken = Taken(0, taken.spent, taken.held)
        # Settlements while the take was out may have grown the allowance: what the lease
        # keeps stays within max(size, one request) (or what it reported).
        lease.allowance = min(lease.allowance + taken.granted, max(most, reported))
        if self._released:
            lease.allowance = 0
        lease.spent_seen = taken.spent
        lease.dry = taken.granted < want
        lease.dry_at = time.monotonic()
        lease.expires = started + self.config.lease_ttl_s

    async def release(self) -> None:
        """At shutdown: reports what every lease spent and gives its allowance back to the
        caps (its reservations in flight stay counted). Raises nothing; a store that does
        not answer keeps the leases until they expire."""
        self._released = True
        for lease in list(self._leases.values()):
            if lease.taking is not None and not lease.taking.done():
                await asyncio.shield(lease.taking)
            await self._take_now(lease)
            if lease.offline:  # the store away: the rest would each wait out the timeout
                return

    async def run(self) -> None:
        """Until cancelled: reports spending, tops leases up before they run dry, renews them
        before they expire, takes the next window's lease for counters in use, and drops
        leases of past windows once reported."""
        while True:
            await asyncio.sleep(_TICK_S)
            await self.tick()

    async def tick(self) -> None:
        now, mono = time.time(), time.monotonic()
        renew_at = self.config.lease_ttl_s / 3
        for store_key, lease in list(self._leases.items()):
            c = lease.counter
            if lease.taking is not None and not lease.taking.done():
                continue
            ended = c.window_end <= now
            if ended and not lease.reserved and not lease.pending:
                self._drop(store_key)
                continue
            # Spending is reported with the takes that are due anyway: a lease running low,
            # one to renew, a past window's last report; `held` counts it meanwhile.
            low = c.cap >= 0 and not ended and not lease.dry and lease.allowance * 2 < lease.size
            stale = lease.expires - mono < self.config.lease_ttl_s - renew_at
            due = low or (ended and lease.pending) or (stale and (lease.used or lease.pending))
            if lease.offline:  # the store away: try again once a second, to report and renew
                due = mono - lease.offline_at >= 1.0
            if due:
                if stale:
                    lease.used = False  # renewed again only if a request uses it meanwhile
                await self._take(lease)
            if lease.used and not ended and c.window_end - now < min(0.3 * c.window_s, 1.0):
                self._prefetch(c)

    def _prefetch(self, c: Counter) -> None:
        """The next window's lease for a counter in use, taken before its first request."""
        wid_now = c.store_key.rsplit(":", 1)[1]
        kind = c.description.rsplit(" ", 1)[1]
        wid, end, length = _windows(kind, c.window_end + 0.001)
        if wid == wid_now:
            return
        key = c.store_key[: -len(wid_now)] + wid
        if key in self._leases:
            return
        lease = self._lease(
            Counter(key, c.subject, c.description, c.metric, c.cap, c.soft, end, length)
        )
        lease.taking = asyncio.ensure_future(self._take_now(lease))
