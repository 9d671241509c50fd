"""Game days: steady load through Envoy, one fault at a time, and what the clients saw.

    python -m loadtest.gameday [--short] [--scenario NAME ...]

Starts a two-region mesh of its own (free ports on 127.0.0.1, a temporary data folder),
ingests a small corpus, then runs each scenario: open-loop load of generate requests
through the edge (economy tier, bounded in rate and time), a fault injected in the default
region, recovery, and a table of requests sent, failed, degraded and p50/p95/p99 latency
(from each request's intended send time) before, during and after the fault.

Scenarios: gateway-kill, retrieval-kill, triton-kill (SIGKILL to the default region's
process, then a restart), retrieval-slow (Envoy's fault filter delays retrieval beyond the
gateway's budget), ingest-kill (SIGKILL to the governance point's retrieval during an
ingest; every acknowledged document must then be searchable in both regions), store-kill
(SIGKILL to the control plane's Redis while the demo tenant's requests are admitted against
its budgets: gateways go on under the offline rule, and the store learns what was spent),
stream-kill and stream-stall (streamed answers of the standard tier's LLM under steady load;
once one is mid-answer, the default region's Triton is killed, or frozen with SIGSTOP past
the tier's stall budget: every stream must end whole, continued in the other region where
it was cut, and the gateways' ragmesh_stream_continuations_total must count each
continuation the clients were told of), budget-exhaustion (a second tenant with small
request budgets sends its own steady requests past its soft cap, where the policy routes it
to the cheaper tier, and its hard cap, where it is refused with RESOURCE_EXHAUSTED: the demo
tenant's load fails nothing, the gateways count the soft-cap crossing, the store's spending
stays within the cap), poisoned-write (the governance point's retrieval killed, a write no
store takes appended to its corpus log as if logged just before the crash, the retrieval
restarted: its recovery must reject the entry, and a write after it must reach every region).
`make test` runs the short form (tests/integration/test_gameday.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis
from google.protobuf import empty_pb2
from ragmesh.retrieval.v1 import retrieval_pb2 as rpb
from ragmesh.v1 import admin_pb2 as apb
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.capped import Capped, routed_generate
from loadtest.latency import percentile
from loadtest.openloop import REQUEST_TIMEOUT_S, Load, Reply, Sample, grpc_generate, steady
from services.client.admin import AdminClient
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.console.scrape import Scrape, fetch
from services.control.policy import Policy, TierHealth
from services.retrieval.corpus_log import CorpusLog
from services.supervisor.launcher import ROOT, Mesh, isolated, resolve

PHASES = ("before", "during", "after")
BATCH = 10  # documents per ingest call in ingest-kill
TEAMS = ("storage", "search", "payments", "identity", "billing", "network")


@dataclass(frozen=True)
class Form:
    """How long each phase runs and how hard: `make gameday` (full) or `make test` (short)."""

    rate: float  # requests per second
    before_s: float
    during_s: float
    after_s: float
    documents: int  # for ingest-kill
    stream_rate: float  # streamed standard answers per second, in the stream scenarios


FULL = Form(rate=8.0, before_s=10.0, during_s=10.0, after_s=15.0, documents=1000, stream_rate=0.5)
SHORT = Form(rate=5.0, before_s=4.0, during_s=4.0, after_s=4.0, documents=100, stream_rate=0.5)
STREAMED = ("stream-kill", "stream-stall")


@dataclass
class Outcome:
    scenario: str
    samples: list[Sample]
    fault_at_s: float = 0.0
    recovered_at_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    returned_after_s: float | None = None  # gateway-kill: first answer from the default region
    acknowledged: list[pb.Document] = field(default_factory=list)  # ingest-kill
    missing: dict[str, int] = field(default_factory=dict)  # region -> acknowledged but absent
    store_caught_up: bool | None = None  # store-kill: the store counts what was admitted
    # Stream scenarios: the continuations the clients' final messages told of, and how many
    # the gateways' ragmesh_stream_continuations_total counted meanwhile.
    continuations: list[pb.Continuation] = field(default_factory=list)
    counted: int | None = None
    capped: Capped | None = None  # budget-exhaustion: the second tenant against its caps
    # poisoned-write: the rise of the governance retrieval's rejected writes (1 expected),
    # and whether the write after the poisoned one was acknowledged.
    rejected: int | None = None
    written_after: bool = False

    def phase(self, name: str) -> list[Sample]:
        bounds = {
            "before": (0.0, self.fault_at_s),
            "during": (self.fault_at_s, self.recovered_at_s),
            "after": (self.recovered_at_s, float("inf")),
        }[name]
        return [s for s in self.samples if bounds[0] <= s.at_s < bounds[1]]

    @property
    def failed(self) -> int:
        return sum(s.status != "OK" for s in self.samples)

    @property
    def broken(self) -> int:
        """Failed requests of the load, and every other check of the scenario that failed."""
        count = self.failed + sum(self.missing.values())
        if self.counted is not None:
            count += self.counted != len(self.continuations)
        if self.capped is not None:
            count += len(self.capped.problems())
        if self.rejected is not None:
            count += (self.rejected != 1) + (not self.written_after)
        return count


def runbook_questions() -> list[pb.GenerateRequest]:
    return [
        pb.GenerateRequest(query=f"Which team is on call for the {team} service?", tier="economy")
        for team in TEAMS
    ]


def stream_questions() -> list[pb.GenerateRequest]:
    """Streamed standard answers that read the same prompt in every region (no sources) and
    ask the model each time (no cache), greedy: a continuation must go on unchanged."""
    return [
        pb.GenerateRequest(
            query=f"Write a short note on how the {team} team runs its on-call week.",
            tier="standard",
            skip_retrieval=True,
            bypass_cache=True,
            temperature=0.0,
            max_tokens=64,
        )
        for team in TEAMS
    ]


class Streams:
    """GenerateStream calls cycling through `requests`, as the load's Send: each reads its
    stream to the end; the final messages' continuations are kept, and `streaming` counts
    the calls that have had text and not yet ended."""

    def __init__(
        self, stub: gateway_pb2_grpc.GatewayStub, key: str, requests: list[pb.GenerateRequest]
    ) -> None:
        self._stub = stub
        self._metadata = (("x-api-key", key),)
        self._requests = requests
        self.streaming = 0
        self.continuations: list[pb.Continuation] = []

    async def __call__(self, i: int) -> Reply:
        request = self._requests[i % len(self._requests)]
        started = False
        try:
            call = self._stub.GenerateStream(
                request, metadata=self._metadata, timeout=REQUEST_TIMEOUT_S
            )
            async for event in call:
                if event.HasField("final"):
                    final = event.final
                    self.continuations.extend(final.continuations)
                    continued = [f"continued: {c.reason}" for c in final.continuations]
                    reason = final.degraded_reason or "; ".join(continued)
                    return Reply("OK", final.degraded, final.region, reason)
                if event.HasField("error"):
                    return Reply(grpc.StatusCode.UNAVAILABLE.name, reason=event.error.message)
                if not started:
                    started = True
                    self.streaming += 1
        except grpc.aio.AioRpcError as exc:
            return Reply(exc.code().name, reason=exc.details() or "")
        finally:
            if started:
                self.streaming -= 1
        return Reply("UNKNOWN", reason="the stream ended with neither final nor error")


def _scrape(url: str, what: str) -> Scrape:
    scrape = fetch(url)
    if scrape is None:
        raise RuntimeError(f"{what} did not answer {url}")
    return scrape


def _gateways_total(mesh: Mesh, name: str, **match: str) -> int:
    """Counter `name` over every region's gateway, the series whose labels include `match`."""
    total = 0.0
    for region in mesh.regions:
        url = f"http://127.0.0.1:{region.config.gateway.metrics_port}/metrics"
        total += _scrape(url, f"the gateway of {region.name}").total(name, **match)
    return int(total)


def _continuations_counted(mesh: Mesh) -> int:
    """ragmesh_stream_continuations_total over every region's gateway, every label."""
    return _gateways_total(mesh, "ragmesh_stream_continuations_total")


def runbook_corpus() -> list[pb.Document]:
    return [
        pb.Document(
            id=f"service-{team}",
            title=f"The {team} service",
            text=(
                f"The {team} service runs in every region. The on-call team for the {team} "
                f"service is the {team} reliability team, reachable on channel #{team}-oncall. "
                f"Its error budget is {10 + i} minutes a month."
            ),
            metadata={"kind": "runbook"},
        )
        for i, team in enumerate(TEAMS)
    ]


Fault = Callable[["GameDay", Outcome, Load], Awaitable[None]]


class GameDay:
    def __init__(self, mesh: Mesh, form: Form) -> None:
        self.mesh = mesh
        self.form = form
        self.key = mesh.config.mesh.demo_key
        self.default = mesh.regions[0].name
        self.streams: Streams | None = None  # the stream scenarios' load

    async def scenario(self, name: str, fault: Fault) -> Outcome:
        outcome = Outcome(name, [])
        streamed = name in STREAMED
        counted = await asyncio.to_thread(_continuations_counted, self.mesh) if streamed else 0
        async with grpc.aio.insecure_channel(self.mesh.edge_target) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            self.streams = Streams(stub, self.key, stream_questions()) if streamed else None
            if self.streams is not None:
                load = Load(self.streams, steady(self.form.stream_rate))
            else:
                send = grpc_generate(stub, self.key, runbook_questions(), REQUEST_TIMEOUT_S)
                load = Load(send, steady(self.form.rate))
            stop = asyncio.Event()
            running = asyncio.create_task(load.run(stop=stop))
            await asyncio.sleep(self.form.before_s)
            try:
                await fault(self, outcome, load)
            finally:
                stop.set()
                outcome.samples = await running
        if self.streams is not None:
            outcome.continuations = self.streams.continuations
            now = await asyncio.to_thread(_continuations_counted, self.mesh)
            outcome.counted = now - counted
            gaps = [c.added_seconds * 1000 for c in outcome.continuations]
            outcome.notes.append(
                f"{len(outcome.continuations)} continuations told to clients, "
                f"{outcome.counted} counted by the gateways; gap p50 "
                f"{percentile(gaps, 0.5):.0f} ms, max {max(gaps, default=0.0):.0f} ms"
            )
        return outcome

    async def play(self, name: str) -> Outcome:
        """Runs scenario `name`, then lets the mesh settle: replicas converged and every
        breaker past its open time, so no scenario starts with the last one's faults."""
        outcome = await self.scenario(name, SCENARIOS[name])
        await self.wait_replicated()
        if outcome.acknowledged:  # checked with the load stopped: a check of data, not speed
            started = time.monotonic()
            counts = await asyncio.gather(
                *(
                    _missing(r.gateway_target, self.key, outcome.acknowledged)
                    for r in self.mesh.regions
                )
            )
            outcome.missing = {r.name: n for r, n in zip(self.mesh.regions, counts, strict=True)}
            checked = ", ".join(f"missing in {r}: {n}" for r, n in outcome.missing.items())
            seconds = time.monotonic() - started
            outcome.notes.append(f"searched each in each region ({seconds:.0f} s): {checked}")
        await asyncio.sleep(self.mesh.config.gateway.breaker_open_s)
        return outcome

    async def kill_and_restart(self, process: str, outcome: Outcome, load: Load) -> None:
        outcome.fault_at_s = load.now()
        await asyncio.to_thread(self.mesh.kill, process)
        await asyncio.sleep(self.form.during_s)
        await self.restart(process)
        outcome.recovered_at_s = load.now()
        await asyncio.sleep(self.form.after_s)

    async def restart(self, process: str) -> None:
        # Spawned on this (the main) thread: a worker thread's exit would take the child with
        # it (parent-death signal). Only the wait runs in a worker thread.
        self.mesh.respawn(process)
        await asyncio.to_thread(self.mesh.wait_ready, process)

    async def chaos(self, region: str, delay_ms: int) -> None:
        """Sets region's retrieval delay in Envoy's runtime (0: none)."""
        await asyncio.to_thread(self.mesh.delay_retrieval, region, delay_ms)

    async def seed(self) -> None:
        async with grpc.aio.insecure_channel(self.mesh.edge_target) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            await stub.IngestDocuments(
                pb.IngestDocumentsRequest(documents=runbook_corpus()),
                metadata=(("x-api-key", self.key),),
                timeout=120,
            )
        await self.wait_replicated()

    async def wait_replicated(self, timeout_s: float = 120.0) -> None:
        """Until every region's replica reports lag 0 at the same corpus version."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = [await self._status(r.gateway_target) for r in self.mesh.regions]
            versions = {s.corpus_version for s in states}
            if len(versions) == 1 and all(s.corpus_lag == 0 for s in states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas did not converge: {states}")
            await asyncio.sleep(0.5)

    async def _status(self, target: str) -> pb.StatusResponse:
        async with grpc.aio.insecure_channel(target) as channel:
            return await gateway_pb2_grpc.GatewayStub(channel).GetStatus(
                empty_pb2.Empty(), metadata=(("x-api-key", self.key),), timeout=10
            )


async def gateway_kill(day: GameDay, outcome: Outcome, load: Load) -> None:
    await day.kill_and_restart(f"gateway-{day.default}", outcome, load)
    # Traffic must come back to the default region within 15 s of its restart.
    restarted = outcome.recovered_at_s
    while load.now() < restarted + 16.0:
        await asyncio.sleep(0.25)
        back = [s for s in load.answered if s.at_s >= restarted and s.region == day.default]
        if back:
            outcome.returned_after_s = min(s.at_s for s in back) - restarted
            break
    outcome.notes.append(
        f"traffic back in {day.default} {outcome.returned_after_s:.1f} s after its restart"
        if outcome.returned_after_s is not None
        else f"traffic did not return to {day.default} within 16 s"
    )


async def _mid_answer(day: GameDay, timeout_s: float = 30.0) -> None:
    """Until a stream of the load has had text and not ended: the fault then cuts it."""
    deadline = time.monotonic() + timeout_s
    while day.streams is None or not day.streams.streaming:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no stream was mid-answer within {timeout_s:g} s")
        await asyncio.sleep(0.02)


async def stream_kill(day: GameDay, outcome: Outcome, load: Load) -> None:
    await _mid_answer(day)
    await day.kill_and_restart(f"triton-{day.default}", outcome, load)


async def stream_stall(day: GameDay, outcome: Outcome, load: Load) -> None:
    """SIGSTOP to the default region's Triton (its process group: the server and its
    models' stubs), long enough for its streams to pass the stall budget, then SIGCONT."""
    tier = day.mesh.config.gateway.tiers["standard"]
    await _mid_answer(day)
    group = day.mesh.processes[f"triton-{day.default}"].pid
    outcome.fault_at_s = load.now()
    os.killpg(group, signal.SIGSTOP)
    try:
        await asyncio.sleep(max(day.form.during_s, tier.inter_token_timeout_s + 3.0))
    finally:
        os.killpg(group, signal.SIGCONT)
    outcome.recovered_at_s = load.now()
    outcome.notes.append(
        f"frozen {outcome.recovered_at_s - outcome.fault_at_s:.1f} s; stall budget "
        f"{tier.inter_token_timeout_s:g} s, first-token budget {tier.first_token_timeout_s:g} s"
    )
    await asyncio.sleep(day.form.after_s)


def _govern(mesh: Mesh) -> None:
    """Budgets for the demo tenant, far above what a game day spends: every request is then
    admitted against leased counters."""
    client = AdminClient(mesh.edge_target, mesh.config.mesh.demo_admin_key, 10.0)
    try:
        budgets = [apb.Budget(metric="requests", window="day", hard=1e9)]
        client.update_tenant(apb.Tenant(name="demo", budgets=budgets))
    finally:
        client.close()
    time.sleep(mesh.config.control.registry_refresh_s * 3)  # every gateway has read it


def _spent(mesh: Mesh, tenant: str = "demo") -> int:
    """The tenant's requests today, as the store counts them."""
    day = time.strftime("%Y%m%d", time.gmtime())
    store = redis.Redis(port=mesh.config.control.redis_port, decode_responses=True)
    try:
        return int(store.hget(f"ragmesh:{{t:{tenant}}}:requests:day:{day}", "spent") or 0)
    finally:
        store.close()


async def store_kill(day: GameDay, outcome: Outcome, load: Load) -> None:
    await asyncio.to_thread(_govern, day.mesh)
    governed_at = load.now()
    await day.kill_and_restart("redis", outcome, load)
    # Back, the store must catch up with what the gateways admitted while it was away.
    answered = sum(s.at_s >= governed_at for s in load.answered)
    deadline = time.monotonic() + 10.0
    while (spent := await asyncio.to_thread(_spent, day.mesh)) < answered:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    outcome.store_caught_up = spent >= answered
    outcome.notes.append(
        f"store counts {spent} requests today, {answered} answered since the budget: "
        + ("caught up" if outcome.store_caught_up else "NOT caught up")
    )


CROSSINGS = "ragmesh_control_soft_cap_crossings_total"
CAPPED_RATE = 2.0  # the second tenant's requests per second in budget-exhaustion


def _capped_tenant(mesh: Mesh, soft: int, hard: int) -> tuple[Capped, str]:
    """A new tenant with a budget of requests a day (soft and hard caps) and a key for it,
    once every gateway has read it; and the tier its policy moves it to past the soft cap."""
    name = f"gameday-{secrets.token_hex(3)}"
    client = AdminClient(mesh.edge_target, mesh.config.mesh.demo_admin_key, 10.0)
    try:
        budget = apb.Budget(metric="requests", window="day", soft=soft, hard=hard)
        client.create_tenant(apb.Tenant(name=name, budgets=[budget]))
        key = client.create_key(apb.CreateKeyRequest(tenant=name)).key
    finally:
        client.close()
    policy = Policy.load(resolve(mesh.config.control.policy_file))
    cheaper = policy.route(name, "", "", lambda _tier: TierHealth(None, False), True).tier
    time.sleep(mesh.config.control.registry_refresh_s * 3)  # every gateway has read it
    return Capped(name, soft, hard, cheaper), key


async def budget_exhaustion(day: GameDay, outcome: Outcome, load: Load) -> None:
    """While the demo tenant's load goes on, a second tenant with small request budgets
    asks at CAPPED_RATE for the fault's length, without naming a tier: past a quarter of
    what it sends (its soft cap) the policy moves it to the cheaper tier, past half (its
    hard cap) every request is refused. The checks are Capped.problems()."""
    sent = int(CAPPED_RATE * day.form.during_s)
    soft, hard = max(1, sent // 4), max(2, sent // 2)
    capped, key = await asyncio.to_thread(_capped_tenant, day.mesh, soft, hard)
    crossings = {"metric": "requests", "window": "day"}
    counted = await asyncio.to_thread(_gateways_total, day.mesh, CROSSINGS, **crossings)
    # The model alone, a few tokens: the standard tier's LLM answers in a fraction of a second.
    request = pb.GenerateRequest(
        query="Say which team is on call.", skip_retrieval=True, bypass_cache=True, max_tokens=8
    )
    async with grpc.aio.insecure_channel(day.mesh.edge_target) as channel:
        tenant_load = Load(
            routed_generate(gateway_pb2_grpc.GatewayStub(channel), key, request),
            steady(CAPPED_RATE),
        )
        outcome.fault_at_s = load.now()
        capped.samples = await tenant_load.run(duration_s=day.form.during_s)
    outcome.recovered_at_s = load.now()
    outcome.capped = capped
    await asyncio.sleep(day.form.after_s)
    # Spending is reported with the gateways' lease takes: by now, or within seconds.
    deadline = time.monotonic() + 10.0
    while True:
        capped.spent = await asyncio.to_thread(_spent, day.mesh, capped.tenant)
        now = await asyncio.to_thread(_gateways_total, day.mesh, CROSSINGS, **crossings)
        capped.crossings = now - counted
        if not capped.problems() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    outcome.notes += capped.notes()


def _poison(path: Path) -> rpb.LogEntry:
    """Appends to the corpus log at `path` a copy of its last logged document with a title
    over the store's 1,024 bytes, as its tenant's next version: an entry no check let
    through, which the store refuses (tests/integration/test_refused_writes.py makes the
    same). Its retrieval must be stopped: the log is then written by one process only."""
    log = CorpusLog(str(path))
    try:
        recent = log.after(max(log.head() - 100, 0), 100)
        last = next(e for e in reversed(recent) if e.HasField("upsert") and not e.rejected)
        entry = rpb.LogEntry(tenant=last.tenant, version=log.version(last.tenant) + 1)
        entry.upsert.CopyFrom(last.upsert)
        entry.upsert.id = "poisoned-write"
        entry.upsert.title = "T" * 1025
        return log.append([entry])[0]
    finally:
        log.close()


def _reason(path: Path, seq: int) -> str:
    """Why entry `seq` of the corpus log at `path` was rejected ("" if it was not)."""
    log = CorpusLog(str(path))
    try:
        return log.after(seq - 1, 1)[0].rejected
    finally:
        log.close()


def _note() -> pb.Document:
    return pb.Document(
        id="after-poisoned-write",
        title="After the poisoned write",
        text="The poisoned write drill ended; the quartz heron lantern log goes on.",
        metadata={"kind": "record"},
    )


async def poisoned_write(day: GameDay, outcome: Outcome, load: Load) -> None:
    """Kills the governance point's retrieval, appends a poisoned entry to its corpus log
    (a write logged but not applied when it crashed), and restarts it: its recovery meets
    the entry, which the store refuses. The entry must be rejected (the retrieval's
    ragmesh_retrieval_rejected_writes_total rises by 1) and a write after it acknowledged;
    play() then finds that write in every region, whose replicas apply the marker."""
    governance = day.mesh.regions[0]
    process = f"retrieval-{governance.name}"
    log = resolve(governance.config.retrieval.corpus_log)
    url = f"http://127.0.0.1:{governance.config.retrieval.metrics_port}/metrics"
    rejected = "ragmesh_retrieval_rejected_writes_total"
    before = await asyncio.to_thread(_scrape, url, "the governance point's retrieval")
    outcome.fault_at_s = load.now()
    await asyncio.to_thread(day.mesh.kill, process)
    entry = await asyncio.to_thread(_poison, log)
    await asyncio.sleep(min(day.form.during_s, 3.0))
    await day.restart(process)  # start() recovers before it serves
    outcome.recovered_at_s = load.now()
    after = await asyncio.to_thread(_scrape, url, "the governance point's retrieval")
    outcome.rejected = int(after.since(before).total(rejected))
    why = await asyncio.to_thread(_reason, log, entry.seq)
    outcome.notes += [
        f"log entry {entry.seq} appended while killed; on restart {rejected} rose by "
        f"{outcome.rejected}",
        f"its marker: {why[:100].rstrip()}" if why else "its entry was NOT rejected",
    ]
    note = _note()
    failed_calls = 0
    async with grpc.aio.insecure_channel(day.mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        request = pb.IngestDocumentsRequest(documents=[note])
        while failed_calls < 10:
            try:
                await stub.IngestDocuments(request, metadata=(("x-api-key", day.key),), timeout=60)
            except grpc.aio.AioRpcError:
                failed_calls += 1
                await asyncio.sleep(0.5)  # then replay it: harmless by design
                continue
            outcome.written_after = True
            outcome.acknowledged = [note]
            break
    outcome.notes.append(
        f"a write after it: {'acknowledged' if outcome.written_after else 'NOT acknowledged'}"
        f" after {failed_calls} failed calls"
    )
    await asyncio.sleep(day.form.after_s)


async def retrieval_kill(day: GameDay, outcome: Outcome, load: Load) -> None:
    await day.kill_and_restart(f"retrieval-{day.default}", outcome, load)


async def triton_kill(day: GameDay, outcome: Outcome, load: Load) -> None:
    await day.kill_and_restart(f"triton-{day.default}", outcome, load)


async def retrieval_slow(day: GameDay, outcome: Outcome, load: Load) -> None:
    budget = day.mesh.config.gateway.retrieval_timeout_s
    delay_ms = int(budget * 1000) * 2 + 1000
    outcome.fault_at_s = load.now()
    await day.chaos(day.default, delay_ms)
    await asyncio.sleep(day.form.during_s)
    await day.chaos(day.default, 0)
    outcome.recovered_at_s = load.now()
    outcome.notes.append(
        f"retrieval delayed {delay_ms} ms against a budget of {budget:g} s; "
        f"total budget {day.mesh.config.gateway.request_timeout_s:g} s"
    )
    await asyncio.sleep(day.form.after_s)


_WORDS = [
    "amber",
    "basalt",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "granite",
    "harbor",
    "indigo",
    "juniper",
    "kelp",
    "lagoon",
    "meadow",
    "nectar",
    "orchid",
    "pebble",
    "quartz",
    "raven",
    "saffron",
    "tundra",
    "umber",
    "violet",
    "willow",
    "yarrow",
    "zephyr",
    "anchor",
    "beacon",
    "canyon",
    "dune",
    "estuary",
    "falcon",
    "glacier",
    "heron",
    "island",
    "jasmine",
    "kestrel",
    "lantern",
    "marsh",
    "nimbus",
    "oasis",
    "prairie",
    "quill",
    "reef",
    "sequoia",
    "thistle",
    "upland",
    "valley",
    "wren",
    "xylem",
    "yucca",
]


def _record(i: int) -> pb.Document:
    """A document whose words differ from every other record's, so a search finds it."""
    words = " ".join(random.Random(i).sample(_WORDS, 8))
    return pb.Document(
        id=f"record-{i}",
        title=f"Archive record {i}",
        text=f"Archive record {i} lists {words}.",
        metadata={"kind": "record"},
    )


async def ingest_kill(day: GameDay, outcome: Outcome, load: Load) -> None:
    """Ingests in batches of 10, replaying a batch that failed, while the governance
    point's retrieval is killed. play() then checks every acknowledged document in every
    region, once the load has stopped."""
    records = [_record(i) for i in range(day.form.documents)]
    batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
    acknowledged: list[pb.Document] = []
    failed_calls = 0
    metadata = (("x-api-key", day.key),)
    async with grpc.aio.insecure_channel(day.mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def write() -> None:
            nonlocal failed_calls
            for batch in batches:
                request = pb.IngestDocumentsRequest(documents=batch)
                while True:
                    try:
                        await stub.IngestDocuments(request, metadata=metadata, timeout=60)
                    except grpc.aio.AioRpcError:
                        failed_calls += 1
                        await asyncio.sleep(0.5)  # then replay it: harmless by design
                        continue
                    acknowledged.extend(batch)
                    break

        writing = asyncio.create_task(write())
        while len(acknowledged) < len(records) // 3 and not writing.done():
            await asyncio.sleep(0.05)
        process = f"retrieval-{day.default}"
        outcome.fault_at_s = load.now()
        await asyncio.to_thread(day.mesh.kill, process)
        at_kill = len(acknowledged)
        await asyncio.sleep(min(day.form.during_s, 3.0))
        await day.restart(process)
        outcome.recovered_at_s = load.now()
        await writing
    outcome.acknowledged = acknowledged
    outcome.notes.append(
        f"ingest of {len(records)} documents: killed after {at_kill} acknowledged; "
        f"{failed_calls} failed calls replayed; acknowledged {len(acknowledged)}"
    )
    await asyncio.sleep(day.form.after_s)


async def _missing(target: str, key: str, documents: list[pb.Document]) -> int:
    """How many of `documents` a search in the region behind `target` does not find.

    One search per document, for its own text: it must be among the top 5. A check of the
    data, not of latency: four searches at a time, and one that fails is asked again.
    """
    metadata = (("x-api-key", key),)
    limit = asyncio.Semaphore(4)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def found(document: pb.Document) -> bool:
            request = pb.SearchRequest(query=document.text, top_k=5)
            async with limit:
                for attempt in range(5):
                    try:
                        reply = await stub.Search(request, metadata=metadata, timeout=30)
                        break
                    except grpc.aio.AioRpcError:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(1.0)
            return document.id in {h.document_id for h in reply.hits}

        results = await asyncio.gather(*(found(d) for d in documents))
    return results.count(False)


SCENARIOS: dict[str, Fault] = {
    "gateway-kill": gateway_kill,
    "retrieval-kill": retrieval_kill,
    "triton-kill": triton_kill,
    "retrieval-slow": retrieval_slow,
    "ingest-kill": ingest_kill,
    "store-kill": store_kill,
    "stream-kill": stream_kill,
    "stream-stall": stream_stall,
    "budget-exhaustion": budget_exhaustion,
    "poisoned-write": poisoned_write,
}


async def run(mesh: Mesh, form: Form, names: list[str]) -> list[Outcome]:
    day = GameDay(mesh, form)
    await day.seed()
    return [await day.play(name) for name in names]


def table(outcomes: list[Outcome]) -> str:
    width = max(map(len, SCENARIOS))
    header = (
        f"{'scenario':{width}} {'phase':7} {'sent':>5} {'failed':>6} {'degraded':>8} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    )
    lines = [header, "-" * len(header)]
    for outcome in outcomes:
        for phase in PHASES:
            samples = outcome.phase(phase)
            ms = [s.latency_s * 1000 for s in samples]
            lines.append(
                f"{outcome.scenario:{width}} {phase:7} {len(samples):5d} "
                f"{sum(s.status != 'OK' for s in samples):6d} "
                f"{sum(s.degraded for s in samples):8d} {percentile(ms, 0.5):8.1f} "
                f"{percentile(ms, 0.95):8.1f} {percentile(ms, 0.99):8.1f}"
            )
        reasons = Counter(s.reason for s in outcome.samples if s.reason)
        notes = outcome.notes + [f"{n} x {reason}" for reason, n in reasons.most_common()]
        lines += [f"{'':{width}} {note}" for note in notes]
    return "\n".join(lines)


def two_regions(data_dir: Path) -> MeshConfig:
    """The repository's mesh config, first two regions, on free ports."""
    return isolated(first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 2), data_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the short form `make test` runs")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    args = parser.parse_args(argv)
    form = SHORT if args.short else FULL
    names = args.scenario or list(SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="gameday-") as tmp:
        started = time.monotonic()
        with Mesh(two_regions(Path(tmp))) as mesh:
            print(
                f"two regions up in {time.monotonic() - started:.0f} s; "
                f"load {form.rate:g} req/s, economy tier, through Envoy (stream scenarios: "
                f"{form.stream_rate:g} streamed standard answers/s)"
            )
            outcomes = asyncio.run(run(mesh, form, names))
    print(table(outcomes))
    raise SystemExit(1 if sum(o.broken for o in outcomes) else 0)


if __name__ == "__main__":
    main()
