"""What telemetry costs the gateway: the same gateway with it on and off, side by side.

    python -m loadtest.bench_telemetry [--rounds 10] [--seconds 8] [--concurrency 4]

Starts a one-region mesh on free ports whose every layer exports spans over OTLP to a sink
inside this process (so export is paid for, as in production), then three more gateways on
the same retrieval and Triton: `gateway-on` (telemetry as configured: per-call metrics,
trace ids, spans for `telemetry.sample_ratio` of the traces), `gateway-all` (the same with
every trace sampled) and `gateway-off` (telemetry.enabled false). In each round all three
are under load at once, each from its own closed loop of `--concurrency` clients sending
economy-tier Generate calls straight to it (no answer cache; the gateway decides the
sampling, as Envoy does in the mesh), so the machine's noise hits them alike; each
gateway's own CPU time comes from /proc.

Gateway throughput on this 2-core machine is set by CPU, so the figure that decides it is
the gateway's CPU time per request; requests per second are printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.gameday import runbook_corpus, runbook_questions
from loadtest.latency import percentile
from loadtest.procfs import cpu_seconds
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.supervisor.launcher import ROOT, Mesh, free_port, isolated

# name: (telemetry.enabled, telemetry.sample_ratio; None: as configured)
VARIANTS = {"gateway-off": (False, None), "gateway-on": (True, None), "gateway-all": (True, 1.0)}


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts every export and counts its bytes."""

    received = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        _Sink.received += len(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    rounds_cpu_ms: list[float] = field(default_factory=list)  # CPU ms per request, by round

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / self.requests


async def closed_loop(target: str, key: str, seconds: float, concurrency: int) -> Tally:
    tally = Tally()
    questions = runbook_questions()
    for question in questions:
        question.bypass_cache = True  # every call does the whole path
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        metadata = (("x-api-key", key),)
        end = time.perf_counter() + seconds

        async def client(n: int) -> None:
            i = n
            while time.perf_counter() < end:
                started = time.perf_counter()
                try:
                    await stub.Generate(
                        questions[i % len(questions)], metadata=metadata, timeout=10
                    )
                except grpc.aio.AioRpcError:
                    tally.errors += 1
                tally.latencies_ms.append((time.perf_counter() - started) * 1000)
                tally.requests += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(concurrency)))
        tally.seconds = time.perf_counter() - started
    return tally


async def measure(
    mesh: Mesh, variants: dict[str, int], rounds: int, seconds: float, concurrency: int
) -> dict[str, Tally]:
    """Every variant under load at the same time, so whatever else the machine does hits
    them alike; each gateway's CPU time over the same seconds."""
    key = mesh.config.mesh.demo_key
    totals = {name: Tally() for name in variants}
    for port in variants.values():  # warm-up: connections, lazy imports, caches
        await closed_loop(f"127.0.0.1:{port}", key, 2.0, concurrency)
    pids = {name: mesh.processes[name].pid for name in variants}
    for r in range(rounds):
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        tallies = await asyncio.gather(
            *(
                closed_loop(f"127.0.0.1:{port}", key, seconds, concurrency)
                for port in variants.values()
            )
        )
        line = []
        for name, tally in zip(variants, tallies, strict=True):
            used = cpu_seconds(pids[name]) - before[name]
            total = totals[name]
            total.cpu_s += used
            total.requests += tally.requests
            total.errors += tally.errors
            total.seconds += tally.seconds
            total.latencies_ms += tally.latencies_ms
            total.rounds_cpu_ms.append(1000 * used / max(tally.requests, 1))
            line.append(f"{name} {tally.rps:5.1f} req/s {total.rounds_cpu_ms[-1]:6.3f} CPU ms/req")
        print(f"  round {r + 1}: " + ", ".join(line), flush=True)
    return totals


def report(totals: dict[str, Tally]) -> None:
    print(
        f"\n{'gateway':12} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'CPU ms/req':>10} {'req/s per core':>14}"
    )
    for name, t in totals.items():
        print(
            f"{name:12} {t.requests:8d} {t.errors:6d} {t.rps:7.1f} "
            f"{percentile(t.latencies_ms, 0.5):7.1f} {percentile(t.latencies_ms, 0.99):7.1f} "
            f"{t.cpu_ms_per_request:10.3f} {1000 / t.cpu_ms_per_request:14.0f}"
        )
    off = totals["gateway-off"]
    print()
    for name in ("gateway-on", "gateway-all"):
        on = totals[name]
        # The median of the rounds' ratios resists a round that something else disturbed.
        pairs = zip(on.rounds_cpu_ms, off.rounds_cpu_ms, strict=True)
        cost = statistics.median(a / b for a, b in pairs) - 1
        print(
            f"{name}: telemetry costs the gateway {cost:+.1%} CPU per request "
            f"(median of the rounds; all rounds together "
            f"{on.cpu_ms_per_request / off.cpu_ms_per_request - 1:+.1%}); "
            f"throughput per core {1 / (1 + cost):.3f}x of telemetry off"
        )
    print(f"OTLP received by the sink: {_Sink.received / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=4, help="clients per gateway")
    args = parser.parse_args()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    otlp = f"http://127.0.0.1:{sink.server_address[1]}"
    with tempfile.TemporaryDirectory(prefix="ragmesh-bench-") as data:
        base = isolated(first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1), Path(data))
        telemetry = dataclasses.replace(base.telemetry, otlp_endpoint=otlp)
        config = dataclasses.replace(base, telemetry=telemetry)
        with Mesh(config) as mesh:
            region = mesh.regions[0].config
            variants = {}
            for name, (enabled, ratio) in VARIANTS.items():
                port = free_port()
                gateway = dataclasses.replace(
                    region.gateway,
                    port=port,
                    openai_port=0,  # gRPC alone: the region's gateway holds the OpenAI port
                    metrics_port=free_port() if enabled else 0,
                )
                t = dataclasses.replace(
                    region.telemetry,
                    enabled=enabled,
                    sample_ratio=region.telemetry.sample_ratio if ratio is None else ratio,
                )
                mesh.start_gateway(name, dataclasses.replace(region, gateway=gateway, telemetry=t))
                variants[name] = port
            _ingest(mesh)
            print(
                f"{args.rounds} rounds x {args.seconds:g} s per gateway, "
                f"{args.concurrency} clients, economy tier, no answer cache; "
                f"gateway-on samples {region.telemetry.sample_ratio:.0%} of the traces"
            )
            totals = asyncio.run(
                measure(mesh, variants, args.rounds, args.seconds, args.concurrency)
            )
    report(totals)


def _ingest(mesh: Mesh) -> None:
    with grpc.insecure_channel(mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        request = pb.IngestDocumentsRequest(documents=runbook_corpus())
        stub.IngestDocuments(
            request, metadata=(("x-api-key", mesh.config.mesh.demo_key),), timeout=60
        )


if __name__ == "__main__":
    main()
