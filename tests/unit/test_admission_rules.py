"""Admission's rules without a store: UTC windows, the counters a request is admitted
against, what a lease take asks for, tenant and budget checks, the registry copy's
authentication, the usage buffer."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import pytest
from redis.crc import key_slot

import services.control.admission as admission_module
from services.common.errors import InvalidArgument, QuotaExceeded, Unauthenticated, Unavailable
from services.config.control import ControlConfig
from services.control import usage
from services.control.admission import MICRO, Admission, Charge, Counter, _windows, counters
from services.control.registry import (
    MAX_CAP,
    ApiKey,
    Budget,
    Registry,
    Tenant,
    key_digest,
    now_ms,
)
from services.control.store import Store, Taken
from services.control.usage import UsageLog, UsageRecord


def _at(*fields: int) -> float:
    """Epoch seconds of a UTC (year, month, day, hour, minute, second)."""
    return float(calendar.timegm((*fields, 0, 0, 0)[:6]))


# -- windows -------------------------------------------------------------------------------


def test_second_and_minute_windows():
    assert _windows("second", 1000.25) == ("1000", 1001.0, 1.0)
    assert _windows("second", 1000.0) == ("1000", 1001.0, 1.0)
    assert _windows("second", 1000.999) == ("1000", 1001.0, 1.0)
    assert _windows("minute", 125.5) == ("2", 180.0, 60.0)
    assert _windows("minute", 120.0) == ("2", 180.0, 60.0)  # a window starts on its edge
    assert _windows("minute", 119.999) == ("1", 120.0, 60.0)
    wid, end, length = _windows("minute", _at(2024, 3, 15, 13, 45, 30))
    assert (end, length) == (_at(2024, 3, 15, 13, 46, 0), 60.0)
    assert wid == str(int(_at(2024, 3, 15, 13, 45, 0)) // 60)


@pytest.mark.parametrize(
    ("now", "wid", "end"),
    [
        (_at(2024, 3, 15, 13, 45, 30), "20240315", _at(2024, 3, 16)),
        (_at(2024, 3, 15), "20240315", _at(2024, 3, 16)),  # midnight opens the day
        (_at(2024, 3, 16) - 0.001, "20240315", _at(2024, 3, 16)),
        (_at(2023, 12, 31, 23, 59, 59), "20231231", _at(2024, 1, 1)),
        (_at(2024, 2, 28, 12), "20240228", _at(2024, 2, 29)),  # a leap day follows
        (_at(2024, 2, 29, 23, 0, 0), "20240229", _at(2024, 3, 1)),
    ],
)
def test_day_windows_are_utc_days(now: float, wid: str, end: float):
    assert _windows("day", now) == (wid, end, 86400.0)


@pytest.mark.parametrize(
    ("now", "wid", "end", "days"),
    [
        (_at(2024, 3, 15, 13, 45, 30), "202403", _at(2024, 4, 1), 31),
        (_at(2024, 4, 1), "202404", _at(2024, 5, 1), 30),  # the month's first second
        (_at(2023, 12, 31, 23, 59, 59), "202312", _at(2024, 1, 1), 31),  # December -> January
        (_at(2023, 12, 1), "202312", _at(2024, 1, 1), 31),
        (_at(2024, 2, 29, 23, 59, 59), "202402", _at(2024, 3, 1), 29),  # a leap February
        (_at(2023, 2, 14), "202302", _at(2023, 3, 1), 28),
        (_at(2100, 2, 14), "210002", _at(2100, 3, 1), 28),  # a century: no leap day
        (_at(2000, 2, 14), "200002", _at(2000, 3, 1), 29),  # every 400 years: a leap day
    ],
)
def test_month_windows_are_utc_months(now: float, wid: str, end: float, days: int):
    assert _windows("month", now) == (wid, end, days * 86400.0)


def test_windows_follow_utc_not_the_local_zone(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: another day there
    time.tzset()
    try:
        assert _windows("day", _at(2024, 3, 15, 13))[0] == "20240315"
        assert _windows("month", _at(2024, 3, 31, 13))[0] == "202403"
    finally:
        monkeypatch.undo()
        time.tzset()


# -- counters ------------------------------------------------------------------------------

KEY = ApiKey(id="3f2a9c1b0d4e", tenant="acme", digest="d")


def _by_description(found: list[Counter]) -> dict[str, Counter]:
    by = {(c.subject, c.description): c for c in found}
    assert len(by) == len(found)
    return {f"{subject} {description}": c for (subject, description), c in by.items()}


def test_counters_name_their_scope_window_and_cap():
    now = _at(2024, 12, 31, 23, 59, 30) + 0.5
    tenant = Tenant(
        "acme",
        requests_per_second=20,
        tokens_per_minute=200_000,
        budgets=(
            Budget("tokens", "day", hard=1_000_000, soft=800_000),
            Budget("cost_usd", "month", hard=50, soft=12.5),
            Budget("requests", "month", soft=300),  # soft only: no hard cap
        ),
    )
    found = _by_description(counters(KEY, tenant, now))
    assert sorted(found) == [
        "key:3f2a9c1b0d4e requests per second",
        "key:3f2a9c1b0d4e tokens per minute",
        "tenant:acme cost_usd per month",
        "tenant:acme requests per month",
        "tenant:acme tokens per day",
    ]
    rps = found["key:3f2a9c1b0d4e requests per second"]
    assert rps == Counter(
        f"ragmesh:{{k:3f2a9c1b0d4e}}:requests:second:{int(now)}",
        "key:3f2a9c1b0d4e",
        "requests per second",
        "requests",
        20,
        0,
        float(int(now) + 1),
        1.0,
    )
    tpm = found["key:3f2a9c1b0d4e tokens per minute"]
    assert tpm.store_key == f"ragmesh:{{k:3f2a9c1b0d4e}}:tokens:minute:{int(now) // 60}"
    assert (tpm.metric, tpm.cap, tpm.soft, tpm.window_end) == (
        "tokens",
        200_000,
        0,
        _at(2025, 1, 1),
    )
    day = found["tenant:acme tokens per day"]
    assert day.store_key == "ragmesh:{t:acme}:tokens:day:20241231"
    assert (day.cap, day.soft, day.window_end, day.window_s) == (
        1_000_000,
        800_000,
        _at(2025, 1, 1),
        86400.0,
    )
    cost = found["tenant:acme cost_usd per month"]
    assert cost.store_key == "ragmesh:{t:acme}:cost_usd:month:202412"
    assert (cost.metric, cost.cap, cost.soft) == ("cost_usd", 50 * MICRO, 12_500_000)  # micro-USD
    assert (cost.window_end, cost.window_s) == (_at(2025, 1, 1), 31 * 86400.0)
    soft_only = found["tenant:acme requests per month"]
    assert (soft_only.cap, soft_only.soft) == (-1, 300)  # hard 0: no cap, never refuses


def test_a_tenant_without_limits_or_budgets_has_no_counters():
    assert counters(KEY, Tenant("acme"), time.time()) == []
    only_budget = Tenant("acme", budgets=(Budget("requests", "day", hard=10),))
    assert [c.subject for c in counters(KEY, only_budget, time.time())] == ["tenant:acme"]


def test_store_keys_carry_a_cluster_hash_tag_per_tenant_and_key():
    tenant = Tenant(
        "acme",
        requests_per_second=1,
        tokens_per_minute=1,
        budgets=(Budget("tokens", "day", hard=1), Budget("cost_usd", "month", hard=1)),
    )
    found = counters(KEY, tenant, _at(2024, 6, 1, 12))
    tenant_keys = [c.store_key for c in found if c.subject == "tenant:acme"]
    key_keys = [c.store_key for c in found if c.subject == "key:3f2a9c1b0d4e"]
    assert len(tenant_keys) == 2 and len(key_keys) == 2
    assert all(k.startswith("ragmesh:{t:acme}:") for k in tenant_keys)
    assert all(k.startswith("ragmesh:{k:3f2a9c1b0d4e}:") for k in key_keys)
    # One slot per tenant (its counters and its usage stream), one per key.
    slots = {key_slot(k.encode()) for k in [*tenant_keys, usage.stream("acme")]}
    assert slots == {key_slot(b"{t:acme}")}
    assert {key_slot(k.encode()) for k in key_keys} == {key_slot(b"{k:3f2a9c1b0d4e}")}
    other = counters(KEY, replace(tenant, name="acme2"), _at(2024, 6, 1, 12))
    assert {c.store_key for c in other}.isdisjoint(tenant_keys)


@pytest.mark.parametrize(
    ("usd", "micro"),
    [(0.01, 10_000), (0.3, 300_000), (2.5, 2_500_000), (7, 7_000_000), (49.99, 49_990_000)],
)
def test_cost_caps_are_micro_usd(usd: float, micro: int):
    tenant = Tenant("acme", budgets=(Budget("cost_usd", "day", hard=usd, soft=usd),))
    (counter,) = counters(KEY, tenant, time.time())
    assert (counter.cap, counter.soft) == (micro, micro)


# $2.01 * 1e6 is 2009999.9999999998 in binary floating point (4.1 and 8.2 likewise just
# below): int() would make the cap 2,009,999 micro-USD, a micro-dollar short.
@pytest.mark.parametrize(("usd", "micro"), [(2.01, 2_010_000), (4.1, 4_100_000), (8.2, 8_200_000)])
def test_cost_caps_are_not_truncated_below_the_dollar_amount(usd: float, micro: int):
    assert int(usd * MICRO) == micro - 1  # what truncation would give
    tenant = Tenant("acme", budgets=(Budget("cost_usd", "day", hard=usd, soft=usd / 2),))
    (counter,) = counters(KEY, tenant, time.time())
    assert (counter.cap, counter.soft) == (micro, micro // 2)


def test_the_largest_allowed_caps_are_counted_exactly():
    tenant = Tenant(
        "acme",
        requests_per_second=int(MAX_CAP),
        budgets=(
            Budget("tokens", "day", hard=MAX_CAP, soft=MAX_CAP),
            Budget("cost_usd", "month", hard=MAX_CAP),
        ),
    )
    assert tenant.check() is tenant
    found = _by_description(counters(KEY, tenant, time.time()))
    assert found["key:3f2a9c1b0d4e requests per second"].cap == 10**12
    assert (found["tenant:acme tokens per day"].cap, found["tenant:acme tokens per day"].soft) == (
        10**12,
        10**12,
    )
    assert found["tenant:acme cost_usd per month"].cap == 10**18  # micro-USD, still exact


# -- what a lease take asks for ----------------------------------------------------------


class _TakeStore:
    """Store.take() that grants whatever is asked and records each call's report; `during`,
    if set, runs once, after the next call's report is made and before its answer (as a
    request that settles while the take is in flight)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, int]] = []
        self.during: Callable[[], None] | None = None

    async def take(self, counter: str, gateway: str, **report: int) -> Taken:
        self.calls.append(
            {name: report[name] for name in ("want", "spent", "reserved", "allowance")}
        )
        during, self.during = self.during, None
        if during is not None:
            during()
        held = report["reserved"] + report["allowance"] + report["want"]
        return Taken(report["want"], report["spent"], held)


def _budget_tenant(cap: int) -> Tenant:
    return Tenant("acme", budgets=(Budget("tokens", "day", hard=cap),))


async def test_a_take_asks_for_the_lease_or_the_largest_waiting_request_not_their_sum():
    store = _TakeStore()
    admission = Admission(cast(Store, store), ControlConfig(lease_fraction=0.1), "gw")
    tenant = _budget_tenant(50)  # lease size 5
    three, seven, two = await asyncio.gather(
        *(admission.admit(KEY, tenant, Charge(tokens=n)) for n in (3, 7, 2))
    )
    assert (three.charge.tokens, seven.charge.tokens, two.charge.tokens) == (3, 7, 2)
    assert store.calls == [
        # All three wait on one take: it asks for the largest of them (7 > the lease's 5),
        # not 3 + 7 + 2 besides the lease. 3 and then 2 are admitted from it...
        {"want": 7, "spent": 0, "reserved": 0, "allowance": 0},
        # ... and 7 waits for the next, which tops the lease (2 left) up to 7 again and
        # reports the 5 reserved.
        {"want": 5, "spent": 0, "reserved": 5, "allowance": 2},
    ]
    assert admission.waits == 4


async def test_a_lease_past_its_local_expiry_reports_no_allowance():
    store = _TakeStore()
    ttl = 0.2
    config = ControlConfig(lease_fraction=0.1, lease_ttl_s=ttl)
    admission = Admission(cast(Store, store), config, "gw")
    tenant = _budget_tenant(50)  # lease size 5
    first_one = await admission.admit(KEY, tenant, Charge(tokens=1))
    second = await admission.admit(KEY, tenant, Charge(tokens=1))
    admission.settle(first_one, Charge(tokens=1))
    assert store.calls == [{"want": 5, "spent": 0, "reserved": 0, "allowance": 0}]
    await asyncio.sleep(ttl + 0.05)  # past the lease's expiry: its 3 unreserved are void
    await admission.tick()  # the renewal
    assert store.calls[1] == {"want": 5, "spent": 1, "reserved": 1, "allowance": 0}
    admission.settle(second, Charge(tokens=0))
    # The second request's unspent 1 goes back to the lease only up to its size: the lease
    # holds the renewal's 5, no more. Five requests of 1 spend it without a take...
    waits = admission.waits
    for _ in range(5):
        admission.settle(await admission.admit(KEY, tenant, Charge(tokens=1)), Charge(tokens=1))
    assert (admission.waits, len(store.calls)) == (waits, 2)
    # ... the sixth waits for one, which reports the 5 spent and nothing held or reserved:
    # the 1 the lease did not keep returns to the cap (the store had it as owed).
    admission.settle(await admission.admit(KEY, tenant, Charge(tokens=1)), Charge(tokens=1))
    assert admission.waits == waits + 1
    assert store.calls[2:] == [{"want": 5, "spent": 5, "reserved": 0, "allowance": 0}]


async def test_a_settle_while_a_take_is_in_flight_does_not_grow_the_lease_past_its_size():
    store = _TakeStore()
    admission = Admission(cast(Store, store), ControlConfig(lease_fraction=0.1), "gw")
    tenant = _budget_tenant(50)  # lease size 5; every request here reserves 5: R = 5
    five = Charge(tokens=5)
    in_flight = await admission.admit(KEY, tenant, five)  # the first take's 5, all reserved
    # The lease is empty (low): the tick's take asks for 5, reporting the 5 in flight. The
    # request settles, spending nothing, while that take waits for the store's answer.
    store.during = lambda: admission.settle(in_flight, Charge())
    await admission.tick()
    expected = [
        {"want": 5, "spent": 0, "reserved": 0, "allowance": 0},
        {"want": 5, "spent": 0, "reserved": 5, "allowance": 0},
    ]
    if store.calls != expected:  # pytest.fail: a setup gone otherwise is no expected failure
        pytest.fail(f"the takes went otherwise: {store.calls}")
    # docs/control-plane.md: a lease never holds more than max(L, R) = 5. So one request
    # of 5 spends it, and the next waits for a take (today the lease holds 5 + 5).
    waits = admission.waits
    for _ in range(2):
        admission.settle(await admission.admit(KEY, tenant, five), five)
    assert admission.waits == waits + 1


class _OutageStore(_TakeStore):
    """_TakeStore whose takes fail while `down` (counted in `failed`), whose `spent` is the
    running total reported, and which grants at most `grant` when set (0: the cap reached)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.failed = 0
        self.grant: int | None = None
        self.spent = 0

    async def take(self, counter: str, gateway: str, **report: int) -> Taken:
        if self.down:
            self.failed += 1
            raise Unavailable("control store unreachable: ConnectionError")
        taken = await super().take(counter, gateway, **report)
        self.spent += report["spent"]
        granted = taken.granted if self.grant is None else min(taken.granted, self.grant)
        return Taken(granted, self.spent, taken.held - taken.granted + granted)


async def _admitted_until_refused(
    admission: Admission, tenant: Tenant, tokens: int
) -> tuple[int, Exception]:
    """Admits and settles requests of `tokens` until one is refused: (admitted, refusal)."""
    charge = Charge(tokens=tokens)
    for admitted in range(1000):
        try:
            reservation = await admission.admit(KEY, tenant, charge)
        except (QuotaExceeded, Unavailable) as exc:
            return admitted, exc
        admission.settle(reservation, charge)
    raise AssertionError("1000 admitted, none refused")


@pytest.mark.parametrize(
    ("cap", "fraction", "allowance"),
    [
        (10, 0.01, 1),  # 0.1 of a unit: at least one
        (10, 0.05, 1),
        (7, 0.3, 3),  # 2.1: rounded up, not down
        (100, 0.05, 5),
        (100, 0.0, 0),  # no offline allowance at all
    ],
)
async def test_the_offline_allowance_is_the_cap_times_offline_fraction_rounded_up(
    cap: int, fraction: float, allowance: int
):
    store = _OutageStore()
    config = ControlConfig(lease_fraction=0.01, offline_fraction=fraction, offline="allow")
    admission = Admission(cast(Store, store), config, "gw")
    tenant = _budget_tenant(cap)  # lease size 1
    admission.settle(await admission.admit(KEY, tenant, Charge(tokens=1)), Charge(tokens=1))
    store.down = True
    admitted, refusal = await _admitted_until_refused(admission, tenant, 1)
    assert admitted == allowance
    assert isinstance(refusal, QuotaExceeded)
    assert "offline allowance is spent (control store unreachable)" in refusal.message
    assert refusal.retry_after_s == config.lease_ttl_s  # not known spent: a lease's time
    assert not admission.online
    assert store.failed == 1  # one failed take; admit does not ask a store known down


async def test_the_offline_allowance_lasts_the_window_and_comes_once_per_window():
    store = _OutageStore()
    ttl = 0.3
    config = ControlConfig(
        lease_fraction=0.1, offline_fraction=0.05, offline="allow", lease_ttl_s=ttl
    )
    admission = Admission(cast(Store, store), config, "gw")
    tenant = _budget_tenant(100)  # lease size 10, offline allowance F 5
    ten = Charge(tokens=10)
    admission.settle(await admission.admit(KEY, tenant, ten), ten)  # the lease, spent
    store.down = True
    failed_at = time.monotonic()
    admission.settle(await admission.admit(KEY, tenant, Charge(tokens=2)), Charge(tokens=2))
    assert (store.failed, admission.online) == (1, False)
    await asyncio.sleep(ttl + 0.05)
    # F is kept past lease_ttl_s (until the window ends): 3 of it are left.
    admitted, refusal = await _admitted_until_refused(admission, tenant, 1)
    assert admitted == 3
    assert isinstance(refusal, QuotaExceeded)
    store.down = False
    await admission.tick()  # under a second since the failed take: not retried yet
    assert (len(store.calls), admission.online) == (1, False)
    await asyncio.sleep(max(failed_at + 1.05 - time.monotonic(), 0))
    await admission.tick()  # a second on: the take reports the 15 spent, asks for a lease
    assert admission.online
    assert store.calls[1:] == [{"want": 10, "spent": 15, "reserved": 0, "allowance": 0}]
    admission.settle(await admission.admit(KEY, tenant, Charge(tokens=1)), Charge(tokens=1))
    # A second outage in the same window: the lease's 9, and no new F (the first used all).
    store.down = True
    admitted, refusal = await _admitted_until_refused(admission, tenant, 1)
    assert admitted == 9
    assert isinstance(refusal, QuotaExceeded)
    assert "offline allowance is spent" in refusal.message
    assert store.failed == 2


async def test_offline_allowance_left_is_not_spent_while_the_store_answers(
    monkeypatch: pytest.MonkeyPatch,
):
    # Every refusal asks the store again here (the production pause is RETAKE_S).
    monkeypatch.setattr(admission_module, "RETAKE_S", 0.0)
    store = _OutageStore()
    config = ControlConfig(lease_fraction=0.1, offline_fraction=0.05, offline="allow")
    admission = Admission(cast(Store, store), config, "gw")
    tenant = _budget_tenant(100)  # lease size 10, F 5
    ten, one = Charge(tokens=10), Charge(tokens=1)
    admission.settle(await admission.admit(KEY, tenant, ten), ten)
    store.down = True
    failed_at = time.monotonic()
    admission.settle(await admission.admit(KEY, tenant, one), one)  # 1 of F: 4 left
    store.down, store.grant = False, 0  # back, and other gateways spent the cap meanwhile
    await asyncio.sleep(max(failed_at + 1.05 - time.monotonic(), 0))
    await admission.tick()
    if not admission.online or len(store.calls) != 2:
        pytest.fail(f"the store is not back: {store.calls}")  # setup: no expected failure
    calls = len(store.calls)
    # The store answers: "a cap holds exactly" (docs/control-plane.md). The request asks
    # it, and is refused. Today it is admitted from F's 4 left, without a take.
    admitted, refusal = await _admitted_until_refused(admission, tenant, 1)
    assert (admitted, len(store.calls)) == (0, calls + 1)
    assert isinstance(refusal, QuotaExceeded)


async def test_a_soft_cap_added_or_removed_mid_window_applies_on_the_next_admit():
    store = _TakeStore()
    admission = Admission(cast(Store, store), ControlConfig(lease_fraction=0.1), "gw")
    tenant = _budget_tenant(50)
    three = Charge(tokens=3)
    admission.settle(await admission.admit(KEY, tenant, three), three)
    assert not admission.over_soft_cap(tenant)  # no soft cap
    soft = Tenant("acme", budgets=(Budget("tokens", "day", hard=50, soft=3),))
    admission.settle(await admission.admit(KEY, soft, Charge(tokens=1)), Charge(tokens=0))
    assert admission.over_soft_cap(soft)  # 3 spent of a soft cap of 3, now counted
    admission.settle(await admission.admit(KEY, tenant, Charge(tokens=1)), Charge(tokens=0))
    assert not admission.over_soft_cap(soft)  # the soft cap removed again
    assert len(store.calls) == 1  # one lease, kept across the changes


async def test_release_reports_spending_and_reserved_and_asks_for_nothing():
    store = _TakeStore()
    admission = Admission(cast(Store, store), ControlConfig(lease_fraction=0.1), "gw")
    tenant = _budget_tenant(50)  # lease size 5
    admission.settle(await admission.admit(KEY, tenant, Charge(tokens=2)), Charge(tokens=2))
    in_flight = await admission.admit(KEY, tenant, Charge(tokens=1))
    await admission.release()
    # The 2 unreserved are given back (allowance 0), the 2 spent reported, the 1 in flight
    # stays reserved.
    assert store.calls[1:] == [{"want": 0, "spent": 2, "reserved": 1, "allowance": 0}]
    assert not in_flight.settled


async def test_an_admit_after_release_ends():
    store = _TakeStore()
    admission = Admission(cast(Store, store), ControlConfig(lease_fraction=0.1), "gw")
    tenant = _budget_tenant(50)
    admission.settle(await admission.admit(KEY, tenant, Charge(tokens=5)), Charge(tokens=5))
    await admission.release()
    with contextlib.suppress(QuotaExceeded, Unavailable):  # refused is fine; hanging is not
        await asyncio.wait_for(admission.admit(KEY, tenant, Charge(tokens=1)), 0.2)


# -- tenant and budget checks --------------------------------------------------------------


METRICS = "requests, tokens, cost_usd"
CAPS = "budgets[2]: caps must be 0..1e+12 (0: none)"


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (Budget("dollars", "day", hard=1), f"budgets[2].metric: must be one of {METRICS}"),
        (Budget("", "day", hard=1), f"budgets[2].metric: must be one of {METRICS}"),
        (Budget("tokens", "week", hard=1), "budgets[2].window: must be one of day, month"),
        (Budget("tokens", "second", hard=1), "budgets[2].window: must be one of day, month"),
        (Budget("tokens", "day", hard=10, soft=11), "budgets[2]: need soft <= hard"),
        (Budget("tokens", "day", hard=-1), CAPS),
        (Budget("tokens", "day", soft=-1), CAPS),
        (Budget("tokens", "day", hard=5, soft=-0.5), CAPS),
        # NaN passes every comparison's `not`; infinity overflows round() in counters().
        (Budget("tokens", "day", hard=float("nan")), CAPS),
        (Budget("tokens", "day", soft=float("nan")), CAPS),
        (Budget("tokens", "day", hard=float("inf")), CAPS),
        (Budget("tokens", "day", hard=float("inf"), soft=float("inf")), CAPS),
        (Budget("tokens", "day", soft=float("-inf")), CAPS),
        (Budget("tokens", "day", hard=MAX_CAP + 1), CAPS),
        (Budget("cost_usd", "month", soft=2 * MAX_CAP), CAPS),
    ],
)
def test_a_bad_budget_names_its_field(budget: Budget, message: str):
    with pytest.raises(InvalidArgument) as caught:
        budget.check("budgets[2]")
    assert caught.value.field == "budgets[2]"
    assert caught.value.message == message
    tenant = Tenant("acme", budgets=(Budget("requests", "day", hard=1), budget))
    with pytest.raises(InvalidArgument) as caught:
        tenant.check()
    assert caught.value.field == "budgets[1]"
    assert caught.value.message == message.replace("budgets[2]", "budgets[1]")


@pytest.mark.parametrize(
    "budget",
    [
        Budget("requests", "day"),  # neither cap: nothing to enforce, still valid
        Budget("tokens", "day", hard=10, soft=10),
        Budget("tokens", "month", soft=500),  # soft only (hard 0: none)
        Budget("cost_usd", "month", hard=0.5, soft=0.25),
        Budget("tokens", "day", hard=MAX_CAP, soft=MAX_CAP),  # the bound is inclusive
        Budget("requests", "month", soft=MAX_CAP),
    ],
)
def test_good_budgets_pass(budget: Budget):
    assert budget.check("budgets[0]") is budget
    assert Tenant("acme", budgets=(budget,)).check().budgets == (budget,)


def test_a_second_budget_for_one_metric_and_window_is_refused():
    tenant = Tenant(
        "acme",
        budgets=(
            Budget("tokens", "day", hard=10),
            Budget("tokens", "month", hard=100),
            Budget("requests", "day", hard=10),
            Budget("tokens", "day", soft=5),
        ),
    )
    with pytest.raises(InvalidArgument) as caught:
        tenant.check()
    assert caught.value.field == "budgets[3]"
    assert caught.value.message == "budgets[3]: a second tokens budget per day"
    assert Tenant("acme", budgets=tenant.budgets[:3]).check()


@pytest.mark.parametrize(
    ("rps", "tpm"),
    [
        (-1, 0),
        (0, -1),
        (-5, -5),
        (10**12 + 1, 0),
        (0, 10**13),
        (float("nan"), 0),
        (0, float("nan")),
        (float("inf"), 0),
        (0, float("-inf")),
    ],
)
def test_limits_out_of_range_are_refused(rps: int, tpm: int):
    with pytest.raises(InvalidArgument) as caught:
        Tenant("acme", requests_per_second=rps, tokens_per_minute=tpm).check()
    assert caught.value.field == "limits"
    assert caught.value.message == "limits: must be 0..1e+12 (0: no limit)"


def test_limits_up_to_max_cap_pass():
    tenant = Tenant("acme", requests_per_second=10**12, tokens_per_minute=10**12)
    assert tenant.check() is tenant
    assert Tenant("acme", requests_per_second=0, tokens_per_minute=0).check()


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Acme",
        "-acme",
        "_acme",
        "ac me",
        "acme.io",
        "acmé",
        "a" * 65,
        "acme/x",
        "acme\n",  # `$` would match before a trailing newline: the whole name must match
        "\nacme",
        "acme\r",
        "a" * 64 + "\n",
    ],
)
def test_bad_tenant_names_are_refused(name: str):
    with pytest.raises(InvalidArgument) as caught:
        Tenant(name).check()
    assert caught.value.field == "name"  # the Tenant message's field
    assert caught.value.message == (
        "name: must be 1-64 of a-z, 0-9, _ and -, starting with a letter or digit"
    )


@pytest.mark.parametrize("name", ["a", "0", "acme", "a-b_c9", "9lives", "a" * 64])
def test_good_tenant_names_pass(name: str):
    assert Tenant(name, requests_per_second=1).check().name == name


# -- the registry copy ---------------------------------------------------------------------

SECRET = "rmk-0a1b2c3d4e5f-secret"


def _registry() -> Registry:
    return Registry(cast(Store, None), 0.5)  # the copy alone: no store call is made


def test_authenticate_before_any_load_is_unavailable():
    registry = _registry()
    with pytest.raises(Unavailable, match="not loaded"):
        registry.authenticate(SECRET)


def test_a_loaded_key_authenticates_and_others_do_not():
    registry = _registry()
    registry.load({"acme": key_digest(SECRET), "other": key_digest("rmk-other")})
    record = registry.authenticate(SECRET)
    assert (record.id, record.tenant, record.digest) == ("seed-acme", "acme", key_digest(SECRET))
    assert registry.authenticate("rmk-other").tenant == "other"
    for wrong in ("rmk-unknown", SECRET + " ", SECRET.upper(), "", key_digest(SECRET)):
        with pytest.raises(Unauthenticated) as caught:
            registry.authenticate(wrong)
        assert caught.value.message == "unknown API key"
    assert registry.tenant("acme") == Tenant("acme")
    assert registry.tenant("nobody") == Tenant("nobody")  # no limits, no budgets


def test_a_reload_forgets_keys_it_no_longer_has():
    registry = _registry()
    registry.load({"acme": key_digest(SECRET)})
    registry.load({"other": key_digest("rmk-other")})
    with pytest.raises(Unauthenticated):
        registry.authenticate(SECRET)


def _with(registry: Registry, **fields: int) -> None:
    """Replaces the copy's record of SECRET with one with `fields` set."""
    digest = key_digest(SECRET)
    registry._by_digest = {digest: replace(registry._by_digest[digest], **fields)}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"revoked_ms": -1_000}, "revoked API key"),
        ({"revoked_ms": -1}, "revoked API key"),
        ({"expires_ms": -1_000}, "expired API key"),
        ({"expires_ms": -1_000, "revoked_ms": -2_000}, "revoked API key"),
    ],
)
def test_revoked_and_expired_keys_are_refused(fields: dict[str, int], message: str):
    registry = _registry()
    registry.load({"acme": key_digest(SECRET)})
    _with(registry, **{name: now_ms() + delta for name, delta in fields.items()})
    with pytest.raises(Unauthenticated) as caught:
        registry.authenticate(SECRET)
    assert caught.value.message == message


def test_a_key_in_its_grace_or_before_its_expiry_still_works():
    registry = _registry()
    registry.load({"acme": key_digest(SECRET)})
    _with(registry, revoked_ms=now_ms() + 60_000, expires_ms=now_ms() + 60_000)
    assert registry.authenticate(SECRET).tenant == "acme"
    _with(registry, revoked_ms=0, expires_ms=0)  # 0: never
    assert registry.authenticate(SECRET).tenant == "acme"


def test_a_record_under_another_keys_digest_is_not_taken():
    registry = _registry()
    registry.load({"acme": key_digest(SECRET)})
    # A copy whose map and record disagree (the record's own digest is checked too).
    registry._by_digest = {key_digest(SECRET): ApiKey(id="x", tenant="acme", digest="0" * 64)}
    with pytest.raises(Unauthenticated, match="unknown API key"):
        registry.authenticate(SECRET)


# -- the usage buffer ----------------------------------------------------------------------


def _record(tenant: str, i: int) -> UsageRecord:
    return UsageRecord(
        tenant, "k1", "standard", "m", i, 2 * i, 0.001 * i, "miss", "local", f"t{i}", "", "ok", i
    )


def test_the_buffer_holds_max_buffered_and_drops_and_counts_the_newest(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(usage, "MAX_BUFFERED", 3)
    log = UsageLog(cast(Store, None))
    for i in range(2):
        log.record(_record("acme", i))
    log.record(_record("other", 2))
    assert (log._buffered, log.dropped) == (3, 0)
    for i in range(3, 8):
        log.record(_record("acme", i))
    assert (log._buffered, log.dropped) == (3, 5)
    assert [r.ts_ms for r in log._buffer["acme"]] == [0, 1]  # the oldest kept
    assert [r.ts_ms for r in log._buffer["other"]] == [2]


class _FakeStore:
    """append_usage() that records its entries, or fails, optionally after a gate opens."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.entries: list[tuple[str, dict[str, str]]] = []
        self.gate: asyncio.Event | None = None

    async def append_usage(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise Unavailable("control store unreachable: ConnectionError")
        self.entries.extend(entries)


async def test_a_flush_writes_one_entry_per_tenant_and_frees_the_buffer(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(usage, "MAX_BUFFERED", 3)
    store = _FakeStore()
    log = UsageLog(cast(Store, store))
    for i, tenant in enumerate(["acme", "other", "acme", "acme"]):
        log.record(_record(tenant, i))
    assert await log.flush() == 3
    assert await log.flush() == 0
    assert sorted(s for s, _ in store.entries) == [usage.stream("acme"), usage.stream("other")]
    fields = dict(store.entries)
    assert [UsageRecord(*r) for r in json.loads(fields[usage.stream("acme")]["r"])] == [
        _record("acme", 0),
        _record("acme", 2),
    ]
    log.record(_record("acme", 9))  # room again
    assert (log._buffered, log.dropped) == (1, 1)


async def test_a_failed_flush_keeps_the_records_in_order(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(usage, "MAX_BUFFERED", 5)
    store = _FakeStore(fail=True)
    log = UsageLog(cast(Store, store))
    for i in range(3):
        log.record(_record("acme", i))
    with pytest.raises(Unavailable):
        await log.flush()
    assert log._buffered == 3
    log.record(_record("acme", 3))
    store.fail = False
    assert await log.flush() == 4
    (entry,) = store.entries
    assert [r[-1] for r in json.loads(entry[1]["r"])] == [0, 1, 2, 3]


async def test_the_buffer_never_exceeds_max_buffered_across_a_failed_flush(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(usage, "MAX_BUFFERED", 3)
    store = _FakeStore(fail=True)
    store.gate = asyncio.Event()
    log = UsageLog(cast(Store, store))
    for i in range(3):
        log.record(_record("acme", i))
    flushing = asyncio.ensure_future(log.flush())
    await asyncio.sleep(0)  # the flush waits on the store (a slow, failing write)
    for i in range(3, 6):
        log.record(_record("acme", i))
    store.gate.set()
    with pytest.raises(Unavailable):
        await flushing
    # The batch in flight still counted: the three that came meanwhile were dropped, and
    # the failed batch is back, in order.
    assert [r.ts_ms for r in log._buffer["acme"]] == [0, 1, 2]
    assert (log._buffered, log.dropped) == (3, 3)
    store.fail = False
    assert await log.flush() == 3
    assert (log._buffered, log.dropped) == (0, 3)
    assert [r[-1] for r in json.loads(store.entries[0][1]["r"])] == [0, 1, 2]


async def test_records_that_come_during_a_flush_are_kept_and_counted(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(usage, "MAX_BUFFERED", 5)
    store = _FakeStore(fail=True)
    store.gate = asyncio.Event()
    log = UsageLog(cast(Store, store))
    for i in range(3):
        log.record(_record("acme", i))
    flushing = asyncio.ensure_future(log.flush())
    await asyncio.sleep(0)
    for i in range(3, 6):  # room for 2 while 3 are in flight
        log.record(_record("acme", i))
    assert (log._buffered, log.dropped) == (5, 1)
    store.gate.set()
    with pytest.raises(Unavailable):
        await flushing
    assert [r.ts_ms for r in log._buffer["acme"]] == [0, 1, 2, 3, 4]  # the batch in front
    assert log._buffered == 5
    # A flush that succeeds while records arrive frees only what it wrote.
    store.fail, store.gate = False, asyncio.Event()
    flushing = asyncio.ensure_future(log.flush())
    await asyncio.sleep(0)
    log.record(_record("acme", 6))  # full: the 5 in flight still count
    assert (log._buffered, log.dropped) == (5, 2)
    store.gate.set()
    assert await flushing == 5
    assert (log._buffered, log.dropped) == (0, 2)
    log.record(_record("acme", 7))
    store.gate = asyncio.Event()
    flushing = asyncio.ensure_future(log.flush())
    await asyncio.sleep(0)
    log.record(_record("other", 8))  # room: kept, and still counted after the flush
    store.gate.set()
    assert await flushing == 1
    assert (log._buffered, log.dropped) == (1, 2)
    assert dict(log._buffer) == {"other": [_record("other", 8)]}


class _CapStore(_TakeStore):
    """Store.take() as the script grants it against a cap: min(want, cap - held by all)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    async def take(self, counter: str, gateway: str, **report: int) -> Taken:
        await super().take(counter, gateway, **report)
        own = report["reserved"] + report["allowance"]
        granted = max(min(report["want"], self.cap - report["spent"] - own), 0)
        return Taken(granted, report["spent"], own + granted)


async def test_refusals_under_a_spent_cap_ask_the_store_at_most_every_retake_pause():
    store = _CapStore(cap=5)
    admission = Admission(cast(Store, store), ControlConfig(lease_fraction=1.0), "gw")
    tenant = _budget_tenant(5)
    held = [await admission.admit(KEY, tenant, Charge(tokens=1)) for _ in range(5)]
    takes = len(store.calls)
    for _ in range(200):  # a client hammering a key whose cap is held by requests in flight
        with pytest.raises(QuotaExceeded):
            await admission.admit(KEY, tenant, Charge(tokens=1))
    assert len(store.calls) - takes == 1  # one take, then refusals within RETAKE_S
    await asyncio.sleep(admission_module.RETAKE_S + 0.01)
    with pytest.raises(QuotaExceeded):
        await admission.admit(KEY, tenant, Charge(tokens=1))
    assert len(store.calls) - takes == 2  # past the pause: asked again
    assert all(not r.settled for r in held)


async def test_a_grant_made_under_the_old_cap_is_void_once_the_cap_changed():
    store = _TakeStore()
    admission = Admission(cast(Store, store), ControlConfig(lease_fraction=0.1), "gw")
    admission.settle(await admission.admit(KEY, _budget_tenant(1000), Charge(tokens=1)), Charge())
    lease = next(iter(admission._leases.values()))
    lease.allowance = 0  # a top-up take, asked under the cap of 1000 (lease size 100) ...
    # ... during which the cap is lowered to 60 (the registry's copy changed).
    store.during = lambda: admission._lease(counters(KEY, _budget_tenant(60), time.time())[0])
    await admission._take_now(lease)
    assert lease.counter.cap == 60
    assert lease.allowance == 0  # granted under the cap of 1000: void


async def test_an_admission_waiting_when_release_runs_ends():
    store = _TakeStore()
    admission = Admission(cast(Store, store), ControlConfig(lease_fraction=0.1), "gw")
    tenant = _budget_tenant(50)
    store.during = lambda: asyncio.ensure_future(admission.release())
    with pytest.raises(Unavailable):
        await asyncio.wait_for(admission.admit(KEY, tenant, Charge(tokens=1)), 1.0)
