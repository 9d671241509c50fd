"""Load runs: open-loop load through Envoy, figures per layer, a CSV the gate reads, a plot.

    python -m loadtest.run --scenario steady --rate 50 --duration 30 [--protocol http]

Starts a mesh of its own (free ports on 127.0.0.1, a temporary data folder; two regions
for `degraded`), ingests a small runbook corpus, then sends Generate requests (economy
tier, answer cache bypassed) on a fixed schedule, over gRPC or HTTP/JSON:

- steady: `rate` requests per second for `duration` seconds;
- burst: the same, with 5x the rate for 10 s (at most a third of the run) in the middle;
- degraded: steady, with a game-day fault (`--fault`, loadtest/gameday.py) in the middle
  third: the default region's process killed and restarted, or its retrieval slowed.

Prints one row per layer (what the clients saw, then the edge, gateway, retrieval and time
to first token from the mesh's own metrics over the run) with p50/p95/p99, errors and
throughput, and the clients' replies by status; writes OUT/<scenario>.csv (those rows:
`ragmesh gate` reads it), OUT/<scenario>-requests.csv (every request) and
OUT/<scenario>.png (latency over time, fault and burst windows shaded).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
from google.protobuf import json_format
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.gameday import SCENARIOS, Form, GameDay, Outcome, runbook_questions
from loadtest.latency import percentile
from loadtest.openloop import Load, Rate, Sample, Send, burst, grpc_generate, http_generate, steady
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.console.gate import GATED, table, write_csv
from services.console.layers import SloRow, slo
from services.console.observe import Observer
from services.supervisor.launcher import ROOT, Mesh, isolated

BURST_FACTOR = 5.0
BURST_S = 10.0
ENVOY_FLUSH_S = 1.5  # Envoy publishes histograms every second (stats_flush_interval)


@dataclass(frozen=True)
class Window:
    label: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Run:
    scenario: str
    samples: list[Sample]
    layers: list[SloRow]
    windows: list[Window]
    seconds: float


def questions(tier: str, cache: bool) -> list[pb.GenerateRequest]:
    asked = runbook_questions()
    for request in asked:
        request.tier, request.bypass_cache = tier, not cache
    return asked


def client_row(samples: list[Sample], seconds: float, budget_ms: float) -> SloRow:
    """What the clients saw: latency from each request's intended send time."""
    ms = [s.latency_s * 1000 for s in samples]
    statuses = Counter(s.status for s in samples)
    return SloRow(
        "total",
        len(samples),
        percentile(ms, 0.95) if ms else None,
        percentile(ms, 0.99) if ms else None,
        budget_ms,
        "at the client, from intended send times",
        p50_ms=percentile(ms, 0.5) if ms else None,
        errors=len(samples) - statuses["OK"],
        rps=len(samples) / seconds if seconds else 0.0,
        statuses=" ".join(f"{k}:{v}" for k, v in statuses.most_common()),
    )


class LoadRun:
    def __init__(self, mesh: Mesh, args: argparse.Namespace) -> None:
        self.mesh = mesh
        self.args = args
        third = args.duration / 3
        self.form = Form(
            rate=args.rate,
            before_s=third,
            during_s=third,
            after_s=third,
            documents=100,
            stream_rate=0.0,  # no stream scenario
        )
        self.day = GameDay(mesh, self.form)

    def rate(self) -> tuple[Rate, list[Window]]:
        a = self.args
        if a.scenario != "burst":
            return steady(a.rate), []
        length = min(BURST_S, a.duration / 3)
        start = (a.duration - length) / 2
        label = f"burst {BURST_FACTOR:g}x"
        return burst(a.rate, BURST_FACTOR, start, length), [Window(label, start, start + length)]

    async def load(self, send: Send) -> tuple[list[Sample], list[Window]]:
        rate, windows = self.rate()
        load = Load(send, rate)
        if self.args.scenario != "degraded":
            return await load.run(duration_s=self.args.duration), windows
        stop = asyncio.Event()
        running = asyncio.create_task(load.run(stop=stop))
        await asyncio.sleep(self.form.before_s)
        outcome = Outcome(self.args.fault, [])
        try:
            await SCENARIOS[self.args.fault](self.day, outcome, load)
        finally:
            stop.set()
            samples = await running
        fault = Window(self.args.fault, outcome.fault_at_s, outcome.recovered_at_s)
        return samples, [fault]

    async def run(self) -> Run:
        await self.day.seed()
        asked = questions(self.args.tier, self.args.cache)
        observer = Observer(self.mesh.config, window_s=float("inf"))
        key = self.mesh.config.mesh.demo_key
        async with (
            grpc.aio.insecure_channel(self.mesh.edge_target) as channel,
            aiohttp.ClientSession() as session,
        ):
            if self.args.protocol == "grpc":
                send = grpc_generate(gateway_pb2_grpc.GatewayStub(channel), key, asked)
            else:
                bodies = [json_format.MessageToDict(q) for q in asked]
                send = http_generate(session, f"{self.mesh.http_url}/v1/generate", key, bodies)
            await asyncio.to_thread(observer.poll)
            started = time.monotonic()
            samples, windows = await self.load(send)
            seconds = time.monotonic() - started
        await asyncio.sleep(ENVOY_FLUSH_S)
        await asyncio.to_thread(observer.poll)
        budgets = self.mesh.config.slo
        layers = [client_row(samples, seconds, budgets.total_ms)]
        layers += [r for r in slo(observer, budgets) if r.stage != "total"]
        return Run(self.args.scenario, samples, layers, windows, seconds)


def write_requests(path: Path, samples: list[Sample]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["at_s", "latency_ms", "status", "degraded", "region", "reason"])
        for s in sorted(samples, key=lambda s: s.at_s):
            at, ms = f"{s.at_s:.4f}", f"{s.latency_s * 1000:.3f}"
            writer.writerow([at, ms, s.status, int(s.degraded), s.region, s.reason])


def plot(path: Path, run: Run, title: str) -> None:
    """Latency of every request over its intended send time; failures in red; the p99 of
    each second as a line; fault and burst windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [s for s in run.samples if s.status == "OK"]
    failed = [s for s in run.samples if s.status != "OK"]
    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=110)
    axes.scatter([s.at_s for s in ok], [s.latency_s * 1000 for s in ok], s=3, label="OK")
    if failed:
        axes.scatter(
            [s.at_s for s in failed],
            [s.latency_s * 1000 for s in failed],
            s=10,
            c="red",
            marker="x",
            label="failed",
        )
    seconds: dict[int, list[float]] = {}
    for s in run.samples:
        seconds.setdefault(int(s.at_s), []).append(s.latency_s * 1000)
    ticks = sorted(seconds)
    axes.plot(
        [t + 0.5 for t in ticks],
        [percentile(seconds[t], 0.99) for t in ticks],
        color="black",
        linewidth=1,
        label="p99 per second",
    )
    for window in run.windows:
        axes.axvspan(window.start_s, window.end_s, color="orange", alpha=0.25)
        axes.text(
            window.start_s, 0.97, f" {window.label}", va="top", transform=axes.get_xaxis_transform()
        )
    axes.set_yscale("log")
    axes.set_xlabel("intended send time (s)")
    axes.set_ylabel("latency (ms)")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("steady", "burst", "degraded"), default="steady")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--tier", default="economy")
    parser.add_argument("--cache", action="store_true", help="let the answer cache answer")
    parser.add_argument(
        "--fault", choices=sorted(set(SCENARIOS) - {"ingest-kill"}), default="retrieval-kill"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "loadtest")
    args = parser.parse_args(argv)
    if not (0 < args.rate <= 5000 and 0 < args.duration <= 600):
        parser.error("--rate must be 0..5000 and --duration 0..600 (a bounded run)")
    regions = 2 if args.scenario == "degraded" else 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp:
        config = isolated(first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), regions), Path(tmp))
        with Mesh(config) as mesh:
            run = asyncio.run(LoadRun(mesh, args).run())
    title = (
        f"{args.scenario}: {args.rate:g} req/s for {args.duration:g} s over {args.protocol}, "
        f"{args.tier} tier, {regions} region(s)"
    )
    print(title)
    print(table(run.layers, GATED))
    degraded = Counter(s.reason for s in run.samples if s.degraded)
    print(f"  replies: {run.layers[0].statuses}; degraded {sum(degraded.values())}")
    for reason, n in degraded.most_common():
        print(f"    {n} x {reason}")
    for window in run.windows:
        print(f"  {window.label}: {window.start_s:.1f}..{window.end_s:.1f} s")
    summary = args.out / f"{args.scenario}.csv"
    write_csv(summary, run.layers)
    write_requests(args.out / f"{args.scenario}-requests.csv", run.samples)
    plot(args.out / f"{args.scenario}.png", run, title)
    print(f"wrote {summary}, {args.scenario}-requests.csv and {args.scenario}.png in {args.out}")


if __name__ == "__main__":
    main()
