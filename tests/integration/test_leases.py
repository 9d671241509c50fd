"""Admission's leases against the mesh's real redis-server: one cap shared by two gateways,
stranded allowance coming back, reserve and settle, the store killed (offline allow and
refuse), soft caps, the take script itself, and usage records read back."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing

import pytest
import redis

import services.control.admission as admission_module
from services.common.errors import InvalidArgument, QuotaExceeded, Unavailable
from services.config.control import ControlConfig
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.control.admission import Admission, Charge, Reservation, counters
from services.control.registry import ApiKey, Budget, Tenant
from services.control.store import Store, Taken
from services.control.usage import UsageLog, UsageRecord, UsageRow, stream
from services.supervisor.launcher import ROOT, Mesh, isolated

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    config = isolated(base, tmp_path_factory.mktemp("leases"))
    with Mesh(config, planes=("redis",)) as running:
        yield running


@pytest.fixture
async def stores(store_mesh: Mesh) -> AsyncIterator[Callable[[], Store]]:
    """Opens a Store per gateway (each its own connections); closes them after the test."""
    opened: list[Store] = []

    def open_store() -> Store:
        opened.append(Store(store_mesh.config.control.store_url(), 0.5))
        return opened[-1]

    yield open_store
    for store in opened:
        await store.close()


def _hash(mesh: Mesh, key: str) -> dict[str, str]:
    url = mesh.config.control.store_url()
    with closing(redis.Redis.from_url(url, socket_timeout=2, decode_responses=True)) as client:
        return client.hgetall(key)


def _tenant(*budgets: Budget) -> tuple[ApiKey, Tenant]:
    """A fresh tenant with `budgets` and one key."""
    name = f"t-{secrets.token_hex(5)}"
    return ApiKey(id=secrets.token_hex(6), tenant=name, digest="0" * 64), Tenant(
        name, budgets=budgets
    )


def _counter_key(key: ApiKey, tenant: Tenant) -> str:
    (counter,) = counters(key, tenant, time.time())
    return counter.store_key


def _config(**fields: object) -> ControlConfig:
    return ControlConfig(**fields)  # type: ignore[arg-type]


async def _admit_until_refused(
    admission: Admission, key: ApiKey, tenant: Tenant, worst: Charge, actual: Charge, limit: int
) -> tuple[int, Exception]:
    """Admits and settles one request at a time until one is refused: (admitted, refusal)."""
    for admitted in range(limit):
        try:
            reservation = await admission.admit(key, tenant, worst)
        except (QuotaExceeded, Unavailable) as exc:
            return admitted, exc
        admission.settle(reservation, actual)
    raise AssertionError(f"{limit} admitted, none refused")


# -- 1. one cap, two gateways --------------------------------------------------------------


async def test_two_gateways_under_concurrency_admit_exactly_the_cap(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    cap = 37
    key, tenant = _tenant(Budget("requests", "day", hard=cap))
    config = _config(lease_ttl_s=0.6)
    gateways = [
        Admission(stores(), config, gateway_id="gw-a"),
        Admission(stores(), config, gateway_id="gw-b"),
    ]
    order = [random.randrange(2) for _ in range(200)]
    random.shuffle(order)

    async def one(gateway: Admission) -> Reservation:
        reservation = await gateway.admit(key, tenant, Charge(requests=1))
        await asyncio.sleep(random.random() * 0.01)
        gateway.settle(reservation, Charge(requests=1))
        return reservation

    results = await asyncio.gather(*(one(gateways[g]) for g in order), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if not isinstance(r, Reservation)]
    assert len(admitted) == cap
    assert len(refused) == 200 - cap
    window_left = counters(key, tenant, time.time())[0].window_end - time.time()
    for refusal in refused:
        assert isinstance(refusal, QuotaExceeded), refusal
        assert refusal.subject == f"tenant:{tenant.name}"
        assert refusal.description == "requests per day"
        assert 0 < refusal.retry_after_s <= window_left + 1
        assert refusal.message.startswith(f"tenant:{tenant.name}: requests per day exhausted")
    assert all(r.settled for r in admitted)

    # Settled, and reported with the next takes (each gateway's lease is renewed after a
    # third of lease_ttl_s): the store counted every admitted request, none more.
    await asyncio.sleep(0.25)
    for gateway in gateways:
        await gateway.tick()
    fields = _hash(store_mesh, _counter_key(key, tenant))
    assert int(fields["spent"]) == cap
    assert sum(int(v) for f, v in fields.items() if f.startswith("held:")) == 0
    # The cap is spent: retry when the day ends, not when some lease might expire. Asked of
    # the gateway that reported last, whose take saw every report (the other one's saw
    # what this one had not reported yet, so its refusals say at most lease_ttl_s).
    with pytest.raises(QuotaExceeded) as caught:
        await gateways[1].admit(key, tenant, Charge(requests=1))
    assert caught.value.retry_after_s > config.lease_ttl_s


# -- 2. stranded allowance -----------------------------------------------------------------


async def test_allowance_stranded_in_a_silent_gateways_lease_returns_when_it_expires(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    cap, ttl = 10, 1.0
    key, tenant = _tenant(Budget("requests", "day", hard=cap))
    config = _config(lease_fraction=0.5, lease_ttl_s=ttl)  # lease L = 5
    a = Admission(stores(), config, gateway_id="gw-a")
    b = Admission(stores(), config, gateway_id="gw-b")
    counter = _counter_key(key, tenant)
    one = Charge(requests=1)

    a.settle(await a.admit(key, tenant, one), one)  # A spends 1, then never ticks again
    # A's first take asked for max(L, its request) = 5, all still held: the 1 it spent is
    # in it until A reports it, and nothing was in flight at the take.
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == ("0", "5", "0")
    a_expires = fields["exp:gw-a"]
    assert a.waits == 1

    admitted, refusal = await _admit_until_refused(b, key, tenant, one, one, cap)
    assert admitted == cap - 5  # what A's lease leaves
    assert isinstance(refusal, QuotaExceeded)
    # Not spent to the cap: allowance may come back, at the latest when A's lease expires.
    assert 0 < refusal.retry_after_s <= ttl

    await asyncio.sleep(ttl + 0.2)  # A's lease expired in the store
    waits = b.waits
    more, refusal = await _admit_until_refused(b, key, tenant, one, one, cap)
    assert more == cap - admitted  # all of A's lease came back to B
    assert isinstance(refusal, QuotaExceeded)
    assert refusal.retry_after_s > ttl  # spent to the cap: the day's end
    # One take for A's 5; B then sees 5 reported + its 5 pending + 1 > cap: refused without
    # asking the store (spending never comes back), so its last 5 are still unreported.
    assert b.waits == waits + 1
    fields = _hash(store_mesh, counter)
    # B's take zeroed A's allowance and kept the rest of A's entry as it was: nothing was
    # in flight at A (owed 0), and A's expiry is not B's to move.
    assert (fields["held:gw-a"], fields["owed:gw-a"], fields["exp:gw-a"]) == ("0", "0", a_expires)
    assert (fields["spent"], fields["held:gw-b"]) == ("5", "5")  # B's last 5: held, pending
    await b.tick()  # B's lease is low (0 of 5): its take reports the 5 and gets nothing
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-b"]) == (str(cap), "0")  # all B admitted
    # A's one request had settled before its lease expired (pending, not in flight): the
    # store had it only inside held:gw-a, which went back to the cap whole, so B got it
    # again. It counts when A reports it: the documented overshoot, at most what A held.
    # A's renewal voids its 4 unspent (its lease expired here too) and gets nothing.
    await a.tick()
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == (str(cap + 1), "0", "0")
    assert int(fields["exp:gw-a"]) > int(a_expires)  # A's own take renewed it


async def test_reservations_in_flight_when_a_lease_expires_stay_counted_as_the_gateways_owed(
    store_mesh: Mesh, stores: Callable[[], Store], monkeypatch: pytest.MonkeyPatch
):
    # Every refusal asks the store again here (the production pause is RETAKE_S).
    monkeypatch.setattr(admission_module, "RETAKE_S", 0.0)
    cap, ttl = 10, 0.6
    key, tenant = _tenant(Budget("requests", "day", hard=cap))
    config = _config(lease_fraction=0.5, lease_ttl_s=ttl)  # lease L = 5
    a = Admission(stores(), config, gateway_id="gw-a")
    b = Admission(stores(), config, gateway_id="gw-b")
    counter = _counter_key(key, tenant)
    one = Charge(requests=1)
    first_one = await a.admit(key, tenant, one)  # A's take: 5
    in_flight = await a.admit(key, tenant, one)
    a.settle(first_one, one)
    await asyncio.sleep(ttl / 3 + 0.05)
    await a.tick()  # the renewal reports: 1 spent, 1 in flight, 3 unreserved; asks for 2
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == ("1", "5", "1")
    a_expires = fields["exp:gw-a"]
    a.settle(await a.admit(key, tenant, one), one)  # settled, not reported: pending
    # A falls silent with 1 in flight and 1 pending; its lease expires.
    await asyncio.sleep(ttl + 0.2)
    admitted, refusal = await _admit_until_refused(b, key, tenant, one, one, cap)
    # B's first take returned A's held 5 to the cap whole, though A had spent 1 of them
    # since it last reported (pending: the store cannot know), and kept A's 1 in flight
    # counted as A's owed (not spent: what it becomes, A reports). B got 5 (10 - 1 spent -
    # 1 owed - 3 to spare), then 3 (dry): 10 - 1 - 1 - 5.
    assert admitted == cap - 1 - 1 == 8
    assert isinstance(refusal, QuotaExceeded)
    # B sees 9 used and 1 more could fit (A's owed may come back): no "recently dry"
    # shortcut, so the refusal came after a third take, which reported B's last 3.
    assert b.waits == 3
    # The 10th is A's owed, which may come back when A reports: a retry within a lease's
    # time, not the day's end.
    assert 0 < refusal.retry_after_s <= ttl
    fields = _hash(store_mesh, counter)
    assert (fields["held:gw-a"], fields["owed:gw-a"], fields["exp:gw-a"]) == ("0", "1", a_expires)
    assert (fields["spent"], fields["held:gw-b"], fields["owed:gw-b"]) == ("9", "0", "0")
    # Admitted: A 3, B 8. The one over the cap is A's pending request, within the bound
    # cap + G * (max(L, R) + F) = 10 + 2 * (5 + 0) (no gateway was offline: no F).
    assert 3 + admitted == cap + 1
    assert not in_flight.settled  # still in flight at A

    # A is back: its request in flight spent nothing after all. A's renewal reports its 1
    # pending and nothing reserved: its owed 1 is freed, not turned into spending.
    a.settle(in_flight, Charge())
    await a.tick()
    fields = _hash(store_mesh, counter)
    # Spent in truth: A 2 (one of its 3 spent nothing), B 8 (all reported by its refusal's
    # take). The store has exactly that.
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == ("10", "0", "0")
    await asyncio.sleep(ttl / 3 + 0.05)
    await b.tick()  # B's renewal: nothing more to report
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-b"], fields["owed:gw-b"]) == ("10", "0", "0")


async def test_release_reports_spending_and_gives_the_allowance_back_at_once(
    store_mesh: Mesh, stores: Callable[[], Store], monkeypatch: pytest.MonkeyPatch
):
    # Every refusal asks the store again here (the production pause is RETAKE_S).
    monkeypatch.setattr(admission_module, "RETAKE_S", 0.0)
    cap = 10
    key, tenant = _tenant(Budget("requests", "day", hard=cap))
    config = _config(lease_fraction=0.5)  # L = 5; lease_ttl_s 10: no expiry in this test
    a = Admission(stores(), config, gateway_id="gw-a")
    b = Admission(stores(), config, gateway_id="gw-b")
    counter = _counter_key(key, tenant)
    one = Charge(requests=1)
    for _ in range(2):
        a.settle(await a.admit(key, tenant, one), one)
    in_flight = await a.admit(key, tenant, one)
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == ("0", "5", "0")
    await a.release()  # shutdown: 2 spent reported, 1 in flight stays owed, 2 given back
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == ("2", "0", "1")
    # B gets what A gave back at once, not when A's lease would have expired: all but A's
    # 2 spent and 1 owed (a take of 5, then one of 2); a third take gets nothing.
    admitted, refusal = await _admit_until_refused(b, key, tenant, one, one, cap)
    assert (admitted, b.waits) == (cap - 2 - 1, 3)
    assert isinstance(refusal, QuotaExceeded)
    assert refusal.retry_after_s == config.lease_ttl_s  # A's 1 owed may come back
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == ("9", "0", "1")
    assert not in_flight.settled


async def _burst_then_silence(a: Admission, b: Admission, key: ApiKey, tenant: Tenant) -> int:
    """A admits a burst of 10 one-request reservations at once and settles them, then falls
    silent (cut off, or crashed) before it reports; once its lease expired, B admits until
    refused. Returns what B admitted."""
    one = Charge(requests=1)
    burst = await asyncio.gather(*(a.admit(key, tenant, one) for _ in range(10)))
    for reservation in burst:
        a.settle(reservation, one)
    await asyncio.sleep(a.config.lease_ttl_s + 0.2)
    spent_by_b, refusal = await _admit_until_refused(b, key, tenant, one, one, 50)
    assert isinstance(refusal, QuotaExceeded), refusal
    return spent_by_b


async def test_the_overshoot_bound_holds_when_a_gateway_falls_silent_after_a_burst(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    cap, ttl = 10, 0.5
    key, tenant = _tenant(Budget("requests", "day", hard=cap))
    config = _config(lease_fraction=0.1, lease_ttl_s=ttl, offline_fraction=0.0)  # L 1, F 0
    a = Admission(stores(), config, gateway_id="gw-a")
    b = Admission(stores(), config, gateway_id="gw-b")
    counter = _counter_key(key, tenant)
    spent_by_b = await _burst_then_silence(a, b, key, tenant)
    # A's burst: ten takes of max(L, R) = 1 each, every one reporting the reservations in
    # flight, so A's last take left held 1 (its last grant) and owed 9 in the store. When
    # the lease expired, B's take returned the 1 to the cap and kept the 9 counted as A's
    # (A settled them, but has not said so): B got 1, then nothing.
    assert a.waits == 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10  # one request admitted per take
    assert spent_by_b == 1
    fields = _hash(store_mesh, counter)
    assert (fields["held:gw-a"], fields["owed:gw-a"]) == ("0", "9")
    assert (fields["spent"], fields["held:gw-b"], fields["owed:gw-b"]) == ("1", "0", "0")
    lease, reservation, offline, gateways = 1, 1, 0, 2
    assert 10 + spent_by_b == cap + 1 <= cap + gateways * (max(lease, reservation) + offline)


async def test_a_gateway_back_from_silence_is_not_counted_twice_for_what_was_in_flight(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    key, tenant = _tenant(Budget("requests", "day", hard=10))
    config = _config(lease_fraction=0.1, lease_ttl_s=0.5, offline_fraction=0.0)
    a = Admission(stores(), config, gateway_id="gw-a")
    b = Admission(stores(), config, gateway_id="gw-b")
    spent_by_b = await _burst_then_silence(a, b, key, tenant)
    assert spent_by_b == 1  # as in the test above: A's 9 owed still counted
    await a.tick()  # A is back: its renewal reports the 10 it spent, none in flight
    fields = _hash(store_mesh, _counter_key(key, tenant))
    # The 9 that were owed count once, as spent; owed drops to what A has in flight now.
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == (
        str(10 + spent_by_b),
        "0",
        "0",
    )


async def test_the_overshoot_bound_holds_when_reservations_settle_below_their_worst_case(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    cap, ttl = 20, 0.6
    key, tenant = _tenant(Budget("tokens", "day", hard=cap))
    config = _config(lease_fraction=0.1, lease_ttl_s=ttl, offline_fraction=0.0)  # L 2, F 0
    a = Admission(stores(), config, gateway_id="gw-a")
    b = Admission(stores(), config, gateway_id="gw-b")
    counter = _counter_key(key, tenant)
    worst = Charge(tokens=5)  # R 5: the bound is 20 + 2 * (max(2, 5) + 0) = 30
    # A reserves the whole cap, one worst case per take: each take grants max(L, R) = 5
    # and reports the reservations before it as owed.
    burst = [await a.admit(key, tenant, worst) for _ in range(4)]
    assert a.waits == 4
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == ("0", "5", "15")
    # All four spend nothing. Their 20 go back to A's lease only up to its size, 2: a lease
    # that kept them (20 unreported, for A to spend and then fall silent) would make A's
    # overshoot the whole cap. The other 18 return to the cap with the renewal.
    for reservation in burst:
        a.settle(reservation, Charge())
    await asyncio.sleep(ttl / 3 + 0.05)
    await a.tick()  # the renewal: 2 unreserved, nothing spent or reserved; asks for none
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == ("0", "2", "0")
    # A spends the cap at the worst case, each request waiting for a take of its 5 (the
    # first tops the 2 up with 3); each take reports the one before, the last one's 5 A
    # holds and spends unreported. Then A falls silent.
    for _ in range(4):
        a.settle(await a.admit(key, tenant, worst), worst)
    assert a.waits == 8
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == ("15", "5", "0")
    await asyncio.sleep(ttl + 0.2)  # A's lease expires
    # B's take returns A's held 5 to the cap (A spent them: the store cannot know): B gets
    # them; then it sees 15 reported + its 5 pending + 5 > cap: refused without a take.
    admitted_by_b, refusal = await _admit_until_refused(b, key, tenant, worst, worst, cap)
    assert admitted_by_b == 1
    assert b.waits == 1
    assert isinstance(refusal, QuotaExceeded)
    assert refusal.retry_after_s > ttl  # spent to the cap as B sees it: the day's end
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["held:gw-b"]) == ("15", "0", "5")
    await b.tick()  # B's lease is low: its take reports the 5 and gets nothing
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["held:gw-b"]) == ("20", "0", "0")
    # Admitted 20 by A and 5 by B: one gateway's worst, max(L, R), over the cap.
    lease, reservation, offline, gateways = 2, 5, 0, 2
    bound = cap + gateways * (max(lease, reservation) + offline)
    assert 4 * 5 + admitted_by_b * 5 == cap + max(lease, reservation) == 25 <= bound
    # A back: its renewal reports its last 5; the store's count is the truth.
    await a.tick()
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw-a"], fields["owed:gw-a"]) == ("25", "0", "0")


class _SettlingStore(Store):
    """A Store whose next take runs `during` once, after its report is made and before the
    store answers: a request settling while the take is in flight."""

    during: Callable[[], None] | None = None

    async def take(self, counter: str, gateway: str, **report: int) -> Taken:
        during, self.during = self.during, None
        if during is not None:
            during()
        return await super().take(counter, gateway, **report)


async def test_the_overshoot_bound_holds_when_requests_settle_while_takes_are_in_flight(
    store_mesh: Mesh,
):
    cap, ttl = 20, 0.6
    key, tenant = _tenant(Budget("tokens", "day", hard=cap))
    config = _config(lease_fraction=0.1, lease_ttl_s=ttl, offline_fraction=0.0)  # L 2, F 0
    two = Charge(tokens=2)  # every request reserves 2: R 2
    lease, reservation, offline, gateways = 2, 2, 0, 3
    bound = cap + gateways * (max(lease, reservation) + offline)  # 26
    counter = _counter_key(key, tenant)
    url = store_mesh.config.control.store_url()
    opened = [_SettlingStore(url, 0.5) for _ in range(gateways)]
    a, b, c = (Admission(opened[i], config, gateway_id=f"gw-{n}") for i, n in enumerate("abc"))
    try:
        for gateway, store, name in ((a, opened[0], "gw-a"), (b, opened[1], "gw-b")):
            in_flight = await gateway.admit(key, tenant, two)  # a take of 2, all reserved
            # The lease is empty (low): the tick's take asks for 2 more. The request in
            # flight settles, spending nothing, while that take waits on the store: its 2
            # go back to the lease (up to its size), and the grant's 2 come on top.
            store.during = lambda g=gateway, r=in_flight: g.settle(r, Charge())
            await gateway.tick()
            await asyncio.sleep(ttl / 3 + 0.05)
            await gateway.tick()  # the renewal reports what the lease kept: its size, 2
            assert _fields(store_mesh, counter, f"held:{name}", f"owed:{name}") == ("2", "0")
            waits = gateway.waits
            # One request spends the 2, not reported; then the gateway falls silent.
            gateway.settle(await gateway.admit(key, tenant, two), two)
            assert gateway.waits == waits
        await asyncio.sleep(ttl + 0.2)  # both leases expired in the store
        # C's takes return both silent gateways' held 2 to the cap, though both spent them.
        admitted_by_c, refusal = await _admit_until_refused(c, key, tenant, two, two, cap)
        assert isinstance(refusal, QuotaExceeded)
        assert admitted_by_c == 10
        # Ten takes, each reporting the one before; C then sees 18 + its 2 pending + 2 > cap:
        # refused without a take, its last 2 unreported until its tick.
        assert c.waits == 10
        assert _hash(store_mesh, counter)["spent"] == "18"
        for gateway in (a, b, c):
            await gateway.tick()  # A and B back: each reports its 2; C's low lease its 2
        spent = int(_hash(store_mesh, counter)["spent"])
        # Admitted: A 2, B 2, C 20 = 24: over the cap by max(L, R) per silent gateway, and
        # within cap + 3 * (max(2, 2) + 0) = 26.
        assert spent == 2 + 2 + 20
        assert spent <= bound
    finally:
        for store in opened:
            await store.close()


# -- 3. reserve, then settle ---------------------------------------------------------------


async def test_settle_returns_the_unspent_reservation_to_the_lease(
    store_mesh: Mesh, stores: Callable[[], Store], monkeypatch: pytest.MonkeyPatch
):
    # Every refusal asks the store again here (the production pause is RETAKE_S).
    monkeypatch.setattr(admission_module, "RETAKE_S", 0.0)
    cap = 100
    key, tenant = _tenant(Budget("tokens", "day", hard=cap))
    admission = Admission(stores(), _config(lease_fraction=1.0), gateway_id="gw")
    first_one = await admission.admit(key, tenant, Charge(requests=1, tokens=100))
    assert admission.waits == 1
    with pytest.raises(QuotaExceeded) as caught:  # all 100 reserved
        await admission.admit(key, tenant, Charge(tokens=1))
    assert caught.value.description == "tokens per day"
    admission.settle(first_one, Charge(requests=1, tokens=30))
    admission.settle(first_one, Charge(requests=1, tokens=0))  # twice: the first one counts
    # The 70 not spent are back in this gateway's lease: no store call needed for them.
    waits = admission.waits
    second = await admission.admit(key, tenant, Charge(tokens=40))
    third = await admission.admit(key, tenant, Charge(tokens=30))
    assert admission.waits == waits
    with pytest.raises(QuotaExceeded) as caught:
        await admission.admit(key, tenant, Charge(tokens=1))
    # 30 spent and 70 reserved: the reservations may settle below their worst case, so the
    # refusal asked the store (one take) and says retry within a lease's time.
    assert admission.waits == waits + 1
    assert caught.value.retry_after_s == admission.config.lease_ttl_s
    admission.settle(second, Charge(tokens=40))
    admission.settle(third, Charge(tokens=25))  # 5 of its worst case back: admitted below
    assert (await admission.admit(key, tenant, Charge(tokens=5))).charge.tokens == 5
    waits = admission.waits
    with pytest.raises(QuotaExceeded) as caught:  # larger than the cap: refused at once
        await admission.admit(key, tenant, Charge(tokens=cap + 1))
    assert f"needs {cap + 1} of a cap of {cap}" in caught.value.message
    assert admission.waits == waits  # no take: it can never fit
    assert caught.value.retry_after_s > admission.config.lease_ttl_s  # the day's end


async def test_a_raised_cap_applies_to_the_next_admit_in_the_same_window(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    key, tenant = _tenant(Budget("requests", "day", hard=5))
    ttl = ControlConfig().lease_ttl_s
    admission = Admission(stores(), _config(lease_fraction=1.0), gateway_id="gw")  # L = cap
    counter = _counter_key(key, tenant)
    one = Charge(requests=1)
    admitted, refusal = await _admit_until_refused(admission, key, tenant, one, one, 10)
    assert (admitted, admission.waits) == (5, 1)
    assert isinstance(refusal, QuotaExceeded)
    assert refusal.retry_after_s > ttl  # 5 of 5 spent: the day's end
    raised = Tenant(tenant.name, budgets=(Budget("requests", "day", hard=8),))
    # The next admit sees the new cap at once: it takes (reporting the 5, asking for a lease
    # of 8) and gets the 3 the new cap leaves; the 4th is refused without a take.
    more, refusal = await _admit_until_refused(admission, key, raised, one, one, 10)
    assert (more, admission.waits) == (3, 2)
    assert isinstance(refusal, QuotaExceeded)
    assert "needs 1 of a cap of 8" in refusal.message
    assert refusal.retry_after_s > ttl
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw"], fields["owed:gw"]) == ("5", "3", "0")


async def test_a_lowered_cap_applies_to_the_next_admit_in_the_same_window(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    key, tenant = _tenant(Budget("requests", "day", hard=100))
    admission = Admission(stores(), _config(lease_fraction=0.1), gateway_id="gw")  # L = 10
    one = Charge(requests=1)
    for _ in range(5):
        admission.settle(await admission.admit(key, tenant, one), one)
    if admission.waits != 1:  # pytest.fail: a setup gone otherwise is no expected failure
        pytest.fail(f"the lease took {admission.waits} takes for 5 requests")
    lowered = Tenant(tenant.name, budgets=(Budget("requests", "day", hard=5),))
    # 5 spent of a new cap of 5: the next request can never fit this window.
    admitted, refusal = await _admit_until_refused(admission, key, lowered, one, one, 10)
    assert admitted == 0  # today: 5, the lease's old allowance, 10 against a cap of 5
    assert isinstance(refusal, QuotaExceeded)
    assert refusal.retry_after_s > admission.config.lease_ttl_s


# -- 4. the store unreachable --------------------------------------------------------------


async def test_offline_allow_admits_the_lease_plus_the_offline_allowance_then_catches_up(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    cap, ttl = 100, 1.2  # lease L = 10, offline allowance F = 5
    key, tenant = _tenant(Budget("requests", "day", hard=cap))
    config = _config(lease_fraction=0.1, offline_fraction=0.05, offline="allow", lease_ttl_s=ttl)
    admission = Admission(stores(), config, gateway_id="gw")
    counter = _counter_key(key, tenant)
    one = Charge(requests=1)
    admission.settle(await admission.admit(key, tenant, one), one)
    held = int(_hash(store_mesh, counter)["held:gw"])
    assert held == 10  # the lease, max(L, the first request): the 1 spent still in it
    store_mesh.kill("redis")
    try:
        admitted, refusal = await _admit_until_refused(admission, key, tenant, one, one, cap)
        offline_at = time.monotonic()
        assert not admission.online
    finally:
        store_mesh.restart("redis")
    assert 1 + admitted == held + int(cap * 0.05) == 15
    assert isinstance(refusal, QuotaExceeded)
    assert refusal.subject == f"tenant:{tenant.name}"
    assert "offline allowance is spent (control store unreachable)" in refusal.message
    assert refusal.retry_after_s == ttl  # not known spent: retry within a lease's time
    # Back: the tick retries an offline lease once a second after its failed take, and
    # that take reports what was spent offline.
    await asyncio.sleep(max(offline_at + 1.05 - time.monotonic(), 0))
    await admission.tick()
    assert admission.online
    fields = _hash(store_mesh, counter)
    assert (fields["spent"], fields["held:gw"], fields["owed:gw"]) == ("15", "10", "0")
    admission.settle(await admission.admit(key, tenant, one), one)  # 85 left: admitted again


async def test_offline_spending_within_the_allowance_is_reported_when_the_store_is_back(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    cap = 100  # L = 10, F = 5
    key, tenant = _tenant(Budget("requests", "day", hard=cap))
    config = _config(lease_fraction=0.1, offline_fraction=0.05, offline="allow")
    admission = Admission(stores(), config, gateway_id="gw")
    one = Charge(requests=1)
    admission.settle(await admission.admit(key, tenant, one), one)
    store_mesh.kill("redis")
    try:
        for _ in range(9 + 3):  # the lease's 9 left, and 3 of the offline allowance
            admission.settle(await admission.admit(key, tenant, one), one)
        offline_at = time.monotonic()  # the failed take came before this
    finally:
        store_mesh.restart("redis")
    # An offline lease is retried by the tick once a second after its failed take.
    await asyncio.sleep(max(offline_at + 1.05 - time.monotonic(), 0))
    await admission.tick()
    assert admission.online
    fields = _hash(store_mesh, _counter_key(key, tenant))
    # The 13 spent are reported. The 2 of F left are no allowance the store granted (so not
    # reported as held): the take asks for a whole lease, 10.
    assert (fields["spent"], fields["held:gw"], fields["owed:gw"]) == ("13", "10", "0")


async def test_offline_refuse_is_unavailable_once_the_lease_is_spent(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    cap = 100
    key, tenant = _tenant(Budget("requests", "day", hard=cap))
    config = _config(lease_fraction=0.1, offline="refuse")
    admission = Admission(stores(), config, gateway_id="gw")
    one = Charge(requests=1)
    admission.settle(await admission.admit(key, tenant, one), one)
    store_mesh.kill("redis")
    try:
        admitted, refusal = await _admit_until_refused(admission, key, tenant, one, one, cap)
    finally:
        store_mesh.restart("redis")
    assert admitted == 9  # what the lease still held (L = 10, 1 spent), nothing more
    assert type(refusal) is Unavailable
    assert "control store unreachable" in refusal.message


# -- 5. soft caps --------------------------------------------------------------------------


async def test_a_soft_cap_never_refuses_and_turns_over_soft_cap_on(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    soft, ttl = 5, 0.3
    key, tenant = _tenant(Budget("requests", "day", soft=soft))
    config = _config(lease_ttl_s=ttl)
    a = Admission(stores(), config, gateway_id="gw-a")
    b = Admission(stores(), config, gateway_id="gw-b")
    one = Charge(requests=1)
    for gateway in (a, b):
        for _ in range(3):
            gateway.settle(await gateway.admit(key, tenant, one), one)
        assert not gateway.over_soft_cap(tenant)  # 3 of 5 seen here
    assert a.waits == b.waits == 0  # no cap: nothing to take before admitting
    await a.tick()  # reports 3: the store has 3
    await b.tick()  # reports 3: the store has 6
    assert int(_hash(store_mesh, _counter_key(key, tenant))["spent"]) == 6
    assert b.over_soft_cap(tenant)
    assert not a.over_soft_cap(tenant)  # A last saw 3
    assert not a.over_soft_cap(Tenant("another"))
    a_expires = _hash(store_mesh, _counter_key(key, tenant))["exp:gw-a"]
    await asyncio.sleep(ttl / 3 + 0.05)
    await a.tick()  # no request used A's lease since its last renewal: not renewed
    assert _hash(store_mesh, _counter_key(key, tenant))["exp:gw-a"] == a_expires
    assert not a.over_soft_cap(tenant)  # A still last saw 3
    a.settle(await a.admit(key, tenant, one), one)
    assert not a.over_soft_cap(tenant)  # 4 of 5 seen here
    await a.tick()  # used since: its renewal reports 1 and reads 7
    assert a.over_soft_cap(tenant)
    for _ in range(50):  # past the soft cap: still admitted
        a.settle(await a.admit(key, tenant, one), one)
    await asyncio.sleep(ttl / 3 + 0.05)
    await a.tick()
    assert int(_hash(store_mesh, _counter_key(key, tenant))["spent"]) == 6 + 1 + 50


async def test_one_gateway_passes_its_soft_cap_locally(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    key, tenant = _tenant(Budget("tokens", "day", hard=1000, soft=100))
    admission = Admission(stores(), _config(), gateway_id="gw")
    reservation = await admission.admit(key, tenant, Charge(tokens=60))
    assert not admission.over_soft_cap(tenant)
    admission.settle(reservation, Charge(tokens=20))
    assert not admission.over_soft_cap(tenant)
    reservation = await admission.admit(key, tenant, Charge(tokens=70))
    assert not admission.over_soft_cap(tenant)  # 20 spent and 70 reserved
    admission.settle(reservation, Charge(tokens=79))
    assert not admission.over_soft_cap(tenant)  # 99
    admission.settle(await admission.admit(key, tenant, Charge(tokens=2)), Charge(tokens=2))
    assert admission.over_soft_cap(tenant)  # 101


# -- 6. the take script --------------------------------------------------------------------


def _take_args(**report: int) -> dict[str, int]:
    """A take's keyword arguments: nothing spent, reserved or held unless `report` says so,
    a lease of 60 s and a counter of 120 s."""
    args = dict(spent=0, reserved=0, allowance=0, lease_ttl_ms=60_000, counter_ttl_s=120)
    return {**args, **report}


def _fields(mesh: Mesh, counter: str, *names: str) -> tuple[str | None, ...]:
    fields = _hash(mesh, counter)
    return tuple(fields.get(name) for name in names)


async def test_take_grants_what_the_cap_leaves_after_every_gateways_held_and_owed(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    store = stores()
    counter = f"ragmesh:{{t:{secrets.token_hex(4)}}}:requests:day:test"
    before_ms = time.time() * 1000
    taken = await store.take(counter, "a", **_take_args(cap=20, want=4))
    assert (taken.granted, taken.spent, taken.held) == (4, 0, 4)
    assert _fields(store_mesh, counter, "spent", "held:a", "owed:a") == ("0", "4", "0")
    first_exp = int(_hash(store_mesh, counter)["exp:a"])
    assert before_ms + 60_000 - 1000 <= first_exp <= time.time() * 1000 + 60_000 + 1000
    with closing(redis.Redis.from_url(store_mesh.config.control.store_url())) as client:
        assert 110 <= client.ttl(counter) <= 120

    taken = await store.take(counter, "b", **_take_args(cap=20, want=8))
    assert (taken.granted, taken.spent, taken.held) == (8, 0, 12)
    taken = await store.take(counter, "c", **_take_args(cap=20, want=10))
    assert (taken.granted, taken.spent, taken.held) == (8, 0, 20)  # min(10, 20 - 0 - 12)

    await asyncio.sleep(0.02)
    # a reports its 4: 2 spent, 1 reserved in flight, 1 unreserved. Held and owed are what
    # it reports (not what the store had); it asks for 3, and 20 - 2 - 16 - 2 leaves none.
    taken = await store.take(
        counter, "a", **_take_args(cap=20, want=3, spent=2, reserved=1, allowance=1)
    )
    assert (taken.granted, taken.spent, taken.held) == (0, 2, 8 + 8 + 1 + 1)
    assert _fields(store_mesh, counter, "spent", "held:a", "owed:a") == ("2", "1", "1")
    assert int(_hash(store_mesh, counter)["exp:a"]) > first_exp  # its own lease extended

    # b reports 5 spent of its 8 and nothing left: its lease expired at b, which voids the
    # 3 it did not spend. They go back to the cap.
    taken = await store.take(counter, "b", **_take_args(cap=20, want=0, spent=5))
    assert (taken.granted, taken.spent, taken.held) == (0, 7, 2 + 8)
    assert _fields(store_mesh, counter, "spent", "held:b", "owed:b") == ("7", "0", "0")

    # c's own report counts: it reserved 4 of its 8, holds 4; 20 - 7 - 2 - (4 + 4) = 3.
    taken = await store.take(counter, "c", **_take_args(cap=20, want=10, reserved=4, allowance=4))
    assert (taken.granted, taken.spent, taken.held) == (3, 7, 2 + 0 + 4 + 4 + 3)
    assert _fields(store_mesh, counter, "held:c", "owed:c") == ("7", "4")

    # A gateway that reports more than the cap leaves (offline allowance it spent, or
    # reserved) gets nothing, never less than nothing; what it reports is what it holds.
    taken = await store.take(
        counter, "d", **_take_args(cap=20, want=5, spent=1, reserved=2, allowance=3)
    )
    assert (taken.granted, taken.spent, taken.held) == (0, 8, 13 + 2 + 3)
    assert _fields(store_mesh, counter, "spent", "held:d", "owed:d") == ("8", "3", "2")
    assert _fields(store_mesh, counter, "held:a", "owed:a", "held:b", "held:c") == (
        "1",
        "1",
        "0",
        "7",
    )


async def test_take_without_a_cap_grants_what_is_asked(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    store = stores()
    counter = f"ragmesh:{{t:{secrets.token_hex(4)}}}:tokens:day:test"
    taken = await store.take(
        counter, "a", **_take_args(cap=-1, want=7, spent=5, reserved=2, allowance=1)
    )
    assert (taken.granted, taken.spent, taken.held) == (7, 5, 2 + 1 + 7)
    assert _fields(store_mesh, counter, "spent", "held:a", "owed:a") == ("5", "8", "2")
    # Past anything a cap would leave: a cap of -1 is none.
    taken = await store.take(counter, "b", **_take_args(cap=-1, want=1_000_000, spent=3))
    assert (taken.granted, taken.spent, taken.held) == (1_000_000, 8, 10 + 1_000_000)
    taken = await store.take(counter, "a", **_take_args(cap=-1, want=0, spent=4))
    assert (taken.granted, taken.spent, taken.held) == (0, 12, 1_000_000)


async def test_take_settles_only_other_gateways_expired_leases(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    store = stores()
    counter = f"ragmesh:{{t:{secrets.token_hex(4)}}}:requests:day:test"
    short = {"lease_ttl_ms": 100, "counter_ttl_s": 60}
    assert (await store.take(counter, "a", **_take_args(cap=10, want=3, **short))).granted == 3
    assert (await store.take(counter, "b", **_take_args(cap=10, want=3))).granted == 3
    await asyncio.sleep(0.2)
    # a's own lease has expired: a take of a's is no settlement, it renews it. a reports 1
    # spent, 1 in flight, 1 unreserved: 10 - 1 - 3 - 2 leaves 4.
    taken = await store.take(
        counter, "a", **_take_args(cap=10, want=10, spent=1, reserved=1, allowance=1, **short)
    )
    assert (taken.granted, taken.spent, taken.held) == (4, 1, 3 + 2 + 4)
    assert _fields(store_mesh, counter, "held:a", "owed:a", "held:b") == ("5", "1", "3")
    a_expires = _hash(store_mesh, counter)["exp:a"]
    await asyncio.sleep(0.2)
    # b's take settles a's expired lease: a's 5 unreserved go back to the cap; a's 1 in
    # flight stays counted as a's owed (not spent: what it becomes, a reports when it is
    # back). b reports 1 spent and 2 held: 10 - 2 spent - 1 owed by a - 2 leaves 5.
    taken = await store.take(counter, "b", **_take_args(cap=10, want=10, spent=1, allowance=2))
    assert (taken.granted, taken.spent, taken.held) == (5, 2, 1 + 2 + 5)
    assert _fields(store_mesh, counter, "held:a", "owed:a", "exp:a") == ("0", "1", a_expires)
    assert _fields(store_mesh, counter, "spent", "held:b", "owed:b") == ("2", "7", "0")
    # A third gateway does not settle b's live lease, and a's owed still counts.
    taken = await store.take(counter, "c", **_take_args(cap=10, want=10))
    assert (taken.granted, taken.spent, taken.held) == (0, 2, 1 + 7)
    assert _fields(store_mesh, counter, "spent", "held:b", "held:c", "owed:a") == (
        "2",
        "7",
        "0",
        "1",
    )


async def test_take_counts_a_settled_lease_s_reservations_once(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    store = stores()
    counter = f"ragmesh:{{t:{secrets.token_hex(4)}}}:requests:day:test"
    short = {"lease_ttl_ms": 100}
    await store.take(counter, "a", **_take_args(cap=10, want=3, **short))
    await store.take(counter, "a", **_take_args(cap=10, want=0, reserved=2, allowance=1, **short))
    await asyncio.sleep(0.2)
    # b's take settles a's expired lease: a's 1 unreserved back to the cap, its 2 in flight
    # still a's owed, nothing spent.
    taken = await store.take(counter, "b", **_take_args(cap=10, want=0))
    assert (taken.granted, taken.spent, taken.held) == (0, 0, 2)
    assert _fields(store_mesh, counter, "spent", "held:a", "owed:a") == ("0", "0", "2")
    # a's 2 in flight end, spending 2, and a reports them (it reports what it spent since
    # its last take, and nothing in flight now): its owed becomes spent, once.
    taken = await store.take(counter, "a", **_take_args(cap=10, want=0, spent=2))
    assert (taken.granted, taken.spent, taken.held) == (0, 2, 0)
    assert _fields(store_mesh, counter, "spent", "held:a", "owed:a") == ("2", "0", "0")


# -- 7. usage records ----------------------------------------------------------------------


def _usage(tenant: str, key_id: str, tier: str, model: str, tokens: int, ts_ms: int):
    return UsageRecord(
        tenant,
        key_id,
        tier,
        model,
        tokens,
        2 * tokens,
        tokens / 1000,
        "miss",
        "local",
        secrets.token_hex(8),
        "criticality",
        "ok",
        ts_ms,
    )


async def test_usage_is_read_back_grouped_and_only_the_tenants_own(
    store_mesh: Mesh, stores: Callable[[], Store]
):
    log = UsageLog(stores())
    tenant, other = f"u-{secrets.token_hex(4)}", f"u-{secrets.token_hex(4)}"
    now = int(time.time() * 1000)
    yesterday = now - 86_400_000
    mine = [
        _usage(tenant, "k1", "standard", "qwen", 10, now - 2_000),
        _usage(tenant, "k1", "economy", "tiny", 20, now - 1_000),
        _usage(tenant, "k2", "standard", "qwen", 40, now),
        _usage(tenant, "k2", "standard", "tiny", 80, yesterday),
    ]
    # Yesterday's record as yesterday's flush wrote it: its entry's id is its time.
    url = store_mesh.config.control.store_url()
    with closing(redis.Redis.from_url(url, socket_timeout=2)) as client:
        client.xadd(stream(tenant), {"r": json.dumps([mine[-1]])}, id=f"{yesterday}-0")
    for record in [*mine[:-1], _usage(other, "k9", "standard", "qwen", 1000, now - 500)]:
        log.record(record)
    assert await log.flush() == 4

    def day(ts_ms: int) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(ts_ms / 1000))

    start, end = yesterday - 1, now + 1
    by_day = await log.query(tenant, start, end, "day")
    expected_days: dict[str, list[int]] = {}
    for record in mine:
        row = expected_days.setdefault(day(record.ts_ms), [0, 0, 0])
        row[0] += 1
        row[1] += record.input_tokens
        row[2] += record.output_tokens
    assert [(r.group, r.requests, r.input_tokens, r.output_tokens) for r in by_day] == [
        (group, *row) for group, row in sorted(expected_days.items())
    ]
    assert await log.query(tenant, start, end, "tier") == [
        UsageRow("economy", 1, 20, 40, 0.02),
        UsageRow("standard", 3, 130, 260, 0.13),
    ]
    assert await log.query(tenant, start, end, "key") == [
        UsageRow("k1", 2, 30, 60, 0.03),
        UsageRow("k2", 2, 120, 240, 0.12),
    ]
    assert await log.query(tenant, start, end, "model") == [
        UsageRow("qwen", 2, 50, 100, 0.05),
        UsageRow("tiny", 2, 100, 200, 0.1),
    ]
    assert await log.query(other, start, end, "key") == [UsageRow("k9", 1, 1000, 2000, 1.0)]
    assert await log.query(f"u-{secrets.token_hex(4)}", start, end, "key") == []
    # The range bounds each record's own time, inclusive.
    assert await log.query(tenant, now - 1_000, now, "key") == [
        UsageRow("k1", 1, 20, 40, 0.02),
        UsageRow("k2", 1, 40, 80, 0.04),
    ]
    assert await log.query(tenant, yesterday, yesterday, "key") == [
        UsageRow("k2", 1, 80, 160, 0.08)
    ]
    assert await log.query(tenant, yesterday + 1, now - 2_001, "tier") == []
    assert await log.query(tenant, now - 3 * 86_400_000, yesterday - 1, "day") == []
    assert await log.query(tenant, now + 1, now + 60_000, "day") == []


@pytest.mark.parametrize(
    ("start", "end", "group_by", "field"),
    [
        (0, 1, "week", "group_by"),
        (0, 1, "", "group_by"),
        (0, 1, "tenant", "group_by"),
        (2, 1, "day", "start"),
        (-1, 1, "day", "start"),
        (0, 366 * 86_400_000 + 1, "day", "start"),
    ],
)
async def test_a_bad_usage_query_is_invalid(
    stores: Callable[[], Store], start: int, end: int, group_by: str, field: str
):
    with pytest.raises(InvalidArgument) as caught:
        await UsageLog(stores()).query("acme", start, end, group_by)
    assert caught.value.field == field


def test_the_store_survives_this_module(store_mesh: Mesh):
    """The kills above restarted the store: it serves, with its append-only file."""
    assert store_mesh.processes["redis"].alive()
    url = store_mesh.config.control.store_url()
    with closing(redis.Redis.from_url(url, socket_timeout=2)) as client:
        assert client.ping()
