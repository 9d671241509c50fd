"""Gateways side by side on one neutral harness: the same instant upstreams, the same load
generator, the same machine, one run.

    python -m loadtest.bench_gateways [--short] [--rates 100,200,...] [--seconds S]
                                      [--streams 10,50,...] [--no-litellm]

Upstreams, each answering at once: `echo` in Triton (loadtest/echo, the tiers' tensor
contract) and an OpenAI-style mock (loadtest/openai_mock.py; streams a word an event,
STREAM_INTERVAL_MS apart). Paths, each against the upstream it fronts:

| path | in front of | what it is |
| --- | --- | --- |
| triton | - | Triton's stream API straight: the baseline of the gRPC paths |
| floor | triton | a no-op grpc.aio proxy hop (loadtest/noop_proxy.py): the Python floor |
| ragmesh | triton | the gateway's native Generate, `echo` tier, straight to it |
| ragmesh-2w | triton | the same as two workers on one port (`gateway.workers: 2`), 8 connections |
| ragmesh-envoy | triton | the same through Envoy: the product's path |
| mock | - | the mock straight: the baseline of the OpenAI paths |
| ragmesh-openai | mock | the gateway's OpenAI API through Envoy, an upstream tier on the mock |
| litellm | mock | LiteLLM's proxy (.venv-litellm, one worker) |

ragmesh runs as users run it: the control plane on (the demo tenant's calls admitted
against two rate limits and four budgets, routed by the policy, recorded), its guardrails
and caches consulted (the cache bypassed, so every request reaches the upstream), one
trace in a hundred sampled. Requests skip retrieval.

Figures, per path: added p50 and p99 at concurrency 1 (one request at a time, against its
baseline's in the same rounds); at each open-loop rate (latency from each request's
intended send time) added p99 and errors, and the highest rate whose added p99 stays under
GOOD_ADDED_P99_MS with no error; the CPU each process spent a request (from /proc;
`client` is this load generator) and the gateways' RSS; for the OpenAI paths, the most
streams open at once that stay stall-free (every stream whole, p99 of the gaps between its
events under the mock's interval plus GOOD_ADDED_P99_MS). Then the ratios against the floor
and against LiteLLM. Everything shares the machine's cores, the load generator included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.bench_overhead import (
    ECHO_REQUEST,
    MAX_TOKENS,
    QUESTION,
    TWO_WORKERS,
    Meter,
    direct_send,
    echo_mesh,
    govern_demo,
    load_echo,
    start_variant,
    with_tier,
)
from loadtest.latency import percentile
from loadtest.litellm_side import VENV, LiteLLMSide, chat
from loadtest.openai_mock import MODEL
from loadtest.openloop import Load, Sample, Send, grpc_generate, steady
from loadtest.procfs import largest_rss_mib
from services.config.gateway import TierConfig
from services.config.mesh import MeshConfig
from services.supervisor.launcher import ROOT, Mesh, free_port
from services.supervisor.processes import Process, wait_until

GOOD_ADDED_P99_MS = 20.0
TIMEOUT_S = 5.0  # an overloaded path shows as errors, not as minutes of queue
STREAM_INTERVAL_MS = 50.0
HOSTED = "hosted"  # ragmesh's upstream tier on the mock
CHANNELS = 8  # connections to the workers' port, each request on the next
# A 20-word question: the mock streams it back a word an event, STREAM_INTERVAL_MS apart.
STREAM_QUESTION = (
    "Explain in a few short sentences how a gateway keeps a streamed answer going when the "
    "model behind it stops."
)


@dataclass(frozen=True)
class PathSpec:
    baseline: str  # the path of the upstream it fronts ("" for a baseline)
    processes: tuple[str, ...]  # whose CPU a request counts, besides the client's
    gateway: tuple[str, ...] = ()  # the processes that are the gateway (CPU, RSS)


PATHS = {
    "triton": PathSpec("", ("triton",)),
    "floor": PathSpec("triton", ("floor", "triton"), ("floor",)),
    "ragmesh": PathSpec("triton", ("gateway", "triton"), ("gateway",)),
    "ragmesh-2w": PathSpec("triton", ("gateway-2w", "triton"), ("gateway-2w",)),
    "ragmesh-envoy": PathSpec("triton", ("envoy", "gateway", "triton"), ("envoy", "gateway")),
    "mock": PathSpec("", ("mock",)),
    "ragmesh-openai": PathSpec("mock", ("envoy", "gateway", "mock"), ("envoy", "gateway")),
    "litellm": PathSpec("mock", ("litellm", "mock"), ("litellm",)),
}
STREAMED = ("mock", "ragmesh-openai", "litellm")


@dataclass(frozen=True)
class Form:
    rates: list[float]
    seconds: float  # each path, each rate
    single: int  # requests one at a time, each path (per round)
    rounds: int
    streams: list[int]  # streams open at once
    stream_seconds: float


FULL = Form(
    rates=[25, 50, 100, 200, 300, 400, 700, 1000, 1500],
    seconds=4.0,
    single=200,
    rounds=2,
    streams=[10, 25, 50, 100, 200],
    stream_seconds=4.0,
)
SHORT = Form(rates=[50], seconds=1.0, single=10, rounds=1, streams=[4], stream_seconds=1.0)


@dataclass
class Results:
    single: dict[str, list[float]] = field(default_factory=dict)  # ms, one at a time
    rated: dict[tuple[str, float], list[Sample]] = field(default_factory=dict)
    cpu_s: dict[tuple[str, float], dict[str, float]] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)  # MB, gateway processes, at the end
    streams: dict[tuple[str, int], StreamRun] = field(default_factory=dict)

    def latencies(self, path: str, rate: float) -> list[float]:
        return [s.latency_s * 1000 for s in self.rated.get((path, rate), []) if s.status == "OK"]

    def errors(self, path: str, rate: float) -> int:
        return sum(s.status != "OK" for s in self.rated.get((path, rate), []))

    def added(self, path: str, rate: float, q: float) -> float:
        base = PATHS[path].baseline
        return percentile(self.latencies(path, rate), q) - percentile(self.latencies(base, rate), q)

    def sustained(self, path: str, rate: float) -> bool:
        samples = self.rated.get((path, rate))
        return (
            bool(samples)
            and not self.errors(path, rate)
            and (self.added(path, rate, 0.99) <= GOOD_ADDED_P99_MS)
        )

    def best_rate(self, path: str) -> float:
        return max((r for (p, r) in self.rated if p == path and self.sustained(p, r)), default=0)

    def cpu_ms(self, path: str, rate: float, names: tuple[str, ...]) -> float:
        """CPU milliseconds a request of `path` at `rate`, summed over `names`."""
        spent = self.cpu_s.get((path, rate), {})
        sent = max(1, len(self.rated.get((path, rate), [])))
        return sum(spent.get(n, 0.0) for n in names) * 1000 / sent


@dataclass
class StreamRun:
    opened: int = 0
    whole: int = 0
    gaps_ms: list[float] = field(default_factory=list)

    def stall_free(self) -> bool:
        bound = STREAM_INTERVAL_MS + GOOD_ADDED_P99_MS
        return (
            self.opened > 0
            and self.whole == self.opened
            and (percentile(self.gaps_ms, 0.99) <= bound)
        )


def harness_mesh(data_dir: Path, mock_url: str) -> MeshConfig:
    """One region with the `echo` tier (bench_overhead's) and `hosted`, an upstream tier on
    the mock."""
    hosted = TierConfig(model=MODEL, base_url=f"{mock_url}/v1", context_tokens=8192, retries=0)
    return with_tier(echo_mesh(data_dir), HOSTED, hosted)


def openai_body(model: str, question: str, stream: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 64 if stream else MAX_TOKENS,
    }
    if model == HOSTED:  # ragmesh's own fields, as the OpenAI SDK's extra_body sends them
        body |= {"skip_retrieval": True, "bypass_cache": True}
    if stream:
        body["stream"] = True
    return body


def stream_send(
    session: aiohttp.ClientSession, url: str, key: str, body: dict[str, object], run: StreamRun
) -> Callable[[], Awaitable[None]]:
    """One streamed chat completion: the gaps between its pieces of text go into `run`;
    whole when it ends with `[DONE]` after a finish reason."""
    data = json.dumps(body).encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=30.0)

    async def one() -> None:
        run.opened += 1
        last, finished = 0.0, False
        try:
            async with session.post(url, data=data, headers=headers, timeout=timeout) as response:
                if response.status != 200:
                    return
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    now = time.perf_counter()
                    if line.strip() == b"data: [DONE]":
                        run.whole += finished
                        return
                    choice = (json.loads(line[6:]).get("choices") or [{}])[0]
                    finished = finished or bool(choice.get("finish_reason"))
                    if not (choice.get("delta") or {}).get("content"):
                        continue  # the time between pieces of text is what a reader sees
                    if last:
                        run.gaps_ms.append((now - last) * 1000)
                    last = now
        except (TimeoutError, aiohttp.ClientError):
            return

    return one


class Harness:
    def __init__(
        self,
        mesh: Mesh,
        side: LiteLLMSide,
        floor: Process,
        floor_port: int,
        litellm: bool,
        workers_target: str,
    ) -> None:
        self.mesh = mesh
        self.workers_target = workers_target
        self.side = side
        self.floor_port = floor_port
        self.litellm = litellm
        region = mesh.regions[0]
        pids = {
            "gateway": mesh.processes[f"gateway-{region.name}"].pid,
            "gateway-2w": mesh.processes[TWO_WORKERS].pid,  # the supervisor and its workers
            "triton": mesh.processes[f"triton-{region.name}"].pid,
            "envoy": mesh.processes["envoy"].pid,
            "floor": floor.pid,
        } | {"mock" if n == "openai-mock" else n: p for n, p in side.pids.items()}
        self.meter = Meter(pids)
        self.paths = [p for p in PATHS if litellm or p != "litellm"]

    async def run(self, form: Form) -> Results:
        results = Results()
        mesh, key = self.mesh, self.mesh.config.mesh.demo_key
        region = mesh.regions[0]
        request = ECHO_REQUEST
        chat_url = f"{mesh.http_url}/v1/chat/completions"
        async with (
            grpc.aio.insecure_channel(region.config.gateway.triton_target) as to_triton,
            grpc.aio.insecure_channel(f"127.0.0.1:{self.floor_port}") as to_floor,
            grpc.aio.insecure_channel(region.gateway_target) as to_gateway,
            grpc.aio.insecure_channel(mesh.edge_target) as to_edge,
            contextlib.AsyncExitStack() as stack,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000)) as http,
        ):

            def generate(channel: grpc.aio.Channel) -> Send:
                stub = gateway_pb2_grpc.GatewayStub(channel)
                return grpc_generate(stub, key, [request], TIMEOUT_S)

            # Each its own connection (no shared subchannel): the kernel gives each new
            # connection to one worker, so one channel would reach one worker alone.
            to_workers = [
                await stack.enter_async_context(
                    grpc.aio.insecure_channel(
                        self.workers_target, options=[("grpc.use_local_subchannel_pool", 1)]
                    )
                )
                for _ in range(CHANNELS)
            ]
            spread = [generate(channel) for channel in to_workers]
            ours = openai_body(HOSTED, QUESTION, stream=False)
            sends: dict[str, Send] = {
                "triton": direct_send(to_triton),
                "floor": direct_send(to_floor),
                "ragmesh": generate(to_gateway),
                "ragmesh-2w": lambda i: spread[i % CHANNELS](i),
                "ragmesh-envoy": generate(to_edge),
                "mock": self.side.direct(http, TIMEOUT_S),
                "ragmesh-openai": chat(http, chat_url, key, TIMEOUT_S, ours),
            }
            if self.litellm:
                sends["litellm"] = self.side.proxied(http, TIMEOUT_S)
            for path in self.paths:  # warm-up: connections, first calls, lazy imports
                await Load(sends[path], steady(50.0)).run(duration_s=1.0)
            print("one request at a time ...", flush=True)
            for _ in range(form.rounds):
                for path in self.paths:
                    kept = results.single.setdefault(path, [])
                    for i in range(form.single):
                        started = time.perf_counter()
                        reply = await sends[path](i)
                        if reply.status == "OK":
                            kept.append((time.perf_counter() - started) * 1000)
            failing: set[str] = set()
            gateways = {p for p in self.paths if PATHS[p].baseline}
            for rate in form.rates:
                if gateways <= failing:
                    break  # every gateway is past its limit: the baselines alone tell nothing
                for _ in range(form.rounds):
                    for path in self.paths:
                        if path in failing:
                            continue
                        before = self.meter.read()
                        load = Load(sends[path], steady(rate))
                        samples = await load.run(duration_s=form.seconds)
                        spent = self.meter.since(before)
                        results.rated.setdefault((path, rate), []).extend(samples)
                        total = results.cpu_s.setdefault((path, rate), {})
                        for name, seconds in spent.items():
                            total[name] = total.get(name, 0.0) + seconds
                        await self.settle()
                for path in self.paths:  # a gateway past its limit is not asked for more
                    base = PATHS[path].baseline
                    if base and not results.sustained(path, rate) and results.sustained(base, rate):
                        failing.add(path)
                print(f"  {rate:g} req/s done", flush=True)
            results.rss = {n: largest_rss_mib(p) for n, p in self.meter.pids.items()}
            stalled: set[str] = set()
            for count in form.streams:
                for path in STREAMED:
                    if path not in self.paths or path in stalled:
                        continue
                    run = StreamRun()
                    url, secret, model = {
                        "mock": (self.side.mock_url, "sk-mock", MODEL),
                        "ragmesh-openai": (mesh.http_url, key, HOSTED),
                        "litellm": (self.side.proxy_url, self.side.master_key, MODEL),
                    }[path]
                    body = openai_body(model, STREAM_QUESTION, stream=True)
                    one = stream_send(http, f"{url}/v1/chat/completions", secret, body, run)
                    await _streams(one, count, form.stream_seconds)
                    results.streams[(path, count)] = run
                    if PATHS[path].baseline and not run.stall_free():
                        stalled.add(path)  # past its limit: not asked for more
                    await self.settle()
                print(f"  {count} streams at once done", flush=True)
        return results

    async def settle(self, limit_s: float = 30.0) -> None:
        """Until every process idles (under a fifth of a core): requests that clients gave
        up on may still be queued in a gateway, and would slow the next path's round."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            before = self.meter.read()
            await asyncio.sleep(0.3)
            spent = self.meter.since(before)
            if all(v < 0.06 for n, v in spent.items() if n != "client"):
                return


async def _streams(one: Callable[[], Awaitable[None]], count: int, seconds: float) -> None:
    """`count` streams open at once for `seconds`: each worker opens the next as one ends."""
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await one()

    await asyncio.gather(*(worker() for _ in range(count)))


def report(results: Results, form: Form, paths: list[str]) -> list[str]:
    """The tables and ratios, as printed; returns the lines."""
    lines = ["", "one request at a time (ms; added: against the upstream it fronts, same rounds)"]
    lines.append(
        f"  {'path':15} {'n':>5} {'p50':>8} {'p99':>8} {'added p50':>10} {'added p99':>10}"
    )
    single_added: dict[str, float] = {}
    for path in paths:
        ms = results.single.get(path, [])
        p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
        added = ""
        if base := PATHS[path].baseline:
            ref = results.single.get(base, [])
            a50, a99 = p50 - percentile(ref, 0.5), p99 - percentile(ref, 0.99)
            single_added[path] = a99
            added = f"{a50:10.2f} {a99:10.2f}"
        lines.append(f"  {path:15} {len(ms):5d} {p50:8.2f} {p99:8.2f} {added}")
    lines += ["", "open loop (ms; CPU ms a request by process, `client` the load generator)"]
    lines.append(
        f"  {'rate':>6} {'path':15} {'sent':>6} {'errors':>6} {'p50':>8} {'p99':>8} "
        f"{'added p99':>10}  CPU"
    )
    for rate in form.rates:
        for path in paths:
            samples = results.rated.get((path, rate))
            if not samples:
                continue
            ms = results.latencies(path, rate)
            added = f"{results.added(path, rate, 0.99):10.2f}" if PATHS[path].baseline else ""
            cpu = " ".join(
                f"{n} {results.cpu_ms(path, rate, (n,)):.2f}"
                for n in ("client", *PATHS[path].processes)
            )
            lines.append(
                f"  {rate:6g} {path:15} {len(samples):6d} {results.errors(path, rate):6d} "
                f"{percentile(ms, 0.5):8.2f} {percentile(ms, 0.99):8.2f} {added:>10}  {cpu}"
            )
    gateways = [p for p in paths if PATHS[p].baseline]
    lines += ["", f"highest rate with added p99 <= {GOOD_ADDED_P99_MS:g} ms and no errors:"]
    best = {p: results.best_rate(p) for p in gateways}
    lines += [f"  {p:15} {best[p]:g} req/s" for p in gateways]
    lines += ["", "gateway CPU a request (ms) at each rate it sustained; RSS at the end (MB)"]
    for path in gateways:
        names = PATHS[path].gateway
        spent = [
            f"{r:g}: {results.cpu_ms(path, r, names):.3f}"
            for r in form.rates
            if results.sustained(path, r)
        ]
        rss = sum(results.rss.get(n, 0.0) for n in names)
        lines.append(f"  {path:15} {', '.join(spent) or '-':60} RSS {rss:.0f}")
    if results.streams:
        bound = STREAM_INTERVAL_MS + GOOD_ADDED_P99_MS
        lines += [
            "",
            f"streams open at once (events {STREAM_INTERVAL_MS:g} ms apart upstream; "
            f"stall-free: all whole, p99 gap <= {bound:g} ms)",
        ]
        lines.append(
            f"  {'streams':>7} {'path':15} {'opened':>6} {'whole':>6} {'gap p50':>8} "
            f"{'gap p99':>8} {'gap max':>8}"
        )
        for (path, count), run in results.streams.items():
            lines.append(
                f"  {count:7d} {path:15} {run.opened:6d} {run.whole:6d} "
                f"{percentile(run.gaps_ms, 0.5):8.1f} {percentile(run.gaps_ms, 0.99):8.1f} "
                f"{max(run.gaps_ms, default=0.0):8.1f}" + ("" if run.stall_free() else "  stalls")
            )
        lines += ["", "the most streams at once that stayed stall-free:"]
        for path in STREAMED:
            counts = [
                c for (p, c), run in results.streams.items() if p == path and run.stall_free()
            ]
            if (path, form.streams[0]) in results.streams:
                lines.append(f"  {path:15} {max(counts, default=0)}")
    lines += ["", "ratios"]
    both = [
        r for r in form.rates if results.sustained("floor", r) and results.sustained("ragmesh", r)
    ]
    if both:
        rate = both[-1]
        ours = results.cpu_ms("ragmesh", rate, ("gateway",))
        floor = results.cpu_ms("floor", rate, ("floor",))
        lines.append(
            f"  gateway CPU a request / the floor's at {rate:g} req/s: "
            f"{ours:.3f} / {floor:.3f} ms = {ours / floor:.2f}x"
            if floor
            else ""
        )
    if "ragmesh" in single_added:
        lines.append(
            f"  added p99 one at a time, ragmesh minus the floor: "
            f"{single_added['ragmesh'] - single_added['floor']:+.2f} ms"
        )
    if "litellm" in best:
        for path in ("ragmesh-envoy", "ragmesh-openai"):
            ratio = (
                f"{best[path] / best['litellm']:.1f}x"
                if best["litellm"]
                else "LiteLLM sustained no rate tried"
            )
            lines.append(f"  highest sustained rate, {path} / litellm: {ratio}")
        lines.append(
            f"  added p99 one at a time, ragmesh-openai vs litellm: "
            f"{single_added['ragmesh-openai']:.2f} vs {single_added['litellm']:.2f} ms"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the short form `make test` runs")
    parser.add_argument("--rates", help="requests per second, a list")
    parser.add_argument("--seconds", type=float, help="each path, each rate")
    parser.add_argument("--streams", help="streams open at once, a list")
    parser.add_argument("--no-litellm", action="store_true")
    args = parser.parse_args(argv)
    form = SHORT if args.short else FULL
    if args.rates:
        form = dataclasses.replace(form, rates=[float(r) for r in args.rates.split(",")])
    if args.seconds:
        form = dataclasses.replace(form, seconds=args.seconds)
    if args.streams is not None:
        form = dataclasses.replace(form, streams=[int(n) for n in args.streams.split(",") if n])
    litellm = not args.no_litellm and (VENV / ".installed").exists()
    if not litellm:
        print(
            f"{VENV.name} not installed or --no-litellm: no LiteLLM path "
            "(`make bench-gateways` builds it)"
        )
    with tempfile.TemporaryDirectory(prefix="gateways-") as tmp:
        side = LiteLLMSide(Path(tmp) / "litellm", chunk_interval_ms=STREAM_INTERVAL_MS)
        side.start(proxy=litellm)
        try:
            config = harness_mesh(Path(tmp) / "mesh", side.mock_url)
            with Mesh(config) as mesh:
                load_echo(mesh.regions[0].config.gateway.triton_target)
                govern_demo(mesh)
                workers_target, _ = start_variant(mesh, TWO_WORKERS)
                port = free_port()
                floor = Process(
                    "floor",
                    [
                        sys.executable,
                        "-m",
                        "loadtest.noop_proxy",
                        "--port",
                        str(port),
                        "--upstream",
                        mesh.regions[0].config.gateway.triton_target,
                    ],
                    Path(tmp) / "floor.log",
                    {"PYTHONPATH": str(ROOT)},
                )
                try:
                    wait_until(lambda: _serves(port), floor, 30.0)
                    harness = Harness(mesh, side, floor, port, litellm, workers_target)
                    print(
                        f"paths: {', '.join(harness.paths)}; rates {form.rates} req/s, "
                        f"{form.rounds} x {form.seconds:g} s each; streams {form.streams}",
                        flush=True,
                    )
                    results = asyncio.run(harness.run(form))
                finally:
                    floor.stop(grace_s=2.0)
        finally:
            side.stop()
    print("\n".join(report(results, form, harness.paths)))


def _serves(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


if __name__ == "__main__":
    main()
