"""What the gateway and the edge add to a model call, side by side with calling Triton directly.

    python -m loadtest.bench_overhead [--rates 100,500,1000,2000] [--rounds 3] [--seconds 4]
                                      [--soak 600 --soak-rate 300]

Starts a one-region mesh on free ports and loads `echo` (loadtest/echo: answers each request
with its own text at once) into its Triton through the model control API; the gateway gets
an `echo` tier. Then, at each fixed rate, open-loop load (latency from each intended send
time) over four paths, in interleaved rounds:

- direct: client -> Triton's stream API, the request the gateway would send (lean client);
- gateway: client -> gateway -> Triton (Generate, echo tier, skip_retrieval, no cache);
- gateway-untraced: the same on a second gateway with telemetry off;
- gateway-control-on, gateway-control-off: the same on two more gateways, alike but for the
  control plane: on (the demo tenant's calls admitted against two per-key rate limits and
  four budgets, six leased counters, routed by the policy, recorded) and off (none of it).
  Neither is behind Envoy, so neither answers its health checks: what they differ by is
  the control plane alone;
- envoy: client -> Envoy -> gateway -> Triton (the same call through the edge);
- envoy-json: the same call as HTTP/JSON (POST /v1/generate, Envoy's transcoder);
- envoy-openai: the same question as OpenAI's chat completions (POST /v1/chat/completions,
  the gateway's OpenAI-compatible API), both over HTTP/1.1 from the same aiohttp client.

Prints, per rate and path, p50/p99, the added p50/p99 against direct, the CPU each process
spent per request (from /proc; `client` is this load generator), the gateway's RSS, and
the highest rate whose added p99 stays under 10 ms. With `.venv-litellm` installed (`make
bench-overhead` builds it), LiteLLM's proxy then runs in the same way against an instant
OpenAI-style mock (loadtest/litellm_side.py), and the two best rates are set side by side.
`--soak N` then holds the Envoy path at `--soak-rate` for N seconds, reading the gateway's
RSS every tenth of it (`make soak`: 10 minutes).
Everything, the load generator included, shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import tritonclient.grpc as triton_sync
import yaml
from google.protobuf import json_format, text_format
from ragmesh.v1 import admin_pb2 as apb
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from loadtest.latency import percentile
from loadtest.litellm_side import VENV, LiteLLMSide, chat, compare
from loadtest.litellm_side import report as litellm_report
from loadtest.openloop import Load, Reply, Sample, Send, grpc_generate, http_generate, steady
from loadtest.procfs import family_cpu_seconds, rss_mib
from services.client.admin import AdminClient
from services.config.gateway import TierConfig
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.contract.prompt import plain_prompt
from services.supervisor.launcher import ROOT, Mesh, free_port, isolated

ECHO = Path(__file__).parent / "echo"
QUESTION = "How do I parse a JSON string?"
MAX_TOKENS = 16
TIMEOUT_S = 5.0  # an overloaded path shows as errors, not as requests queued for minutes
GOOD_P99_ADDED_MS = 10.0
UNTRACED = "gateway-untraced"  # telemetry.enabled false
# The same request in OpenAI's words (ragmesh's own fields as the SDK's extra_body sends them).
CHAT = {
    "model": "echo",
    "messages": [{"role": "user", "content": QUESTION}],
    "max_tokens": MAX_TOKENS,
    "skip_retrieval": True,
    "bypass_cache": True,
}
# The gateway's call on the echo tier: the model alone, every time.
ECHO_REQUEST = pb.GenerateRequest(
    query=QUESTION, tier="echo", max_tokens=MAX_TOKENS, skip_retrieval=True, bypass_cache=True
)
CONTROL_ON = "gateway-control-on"
CONTROL_OFF = "gateway-control-off"  # control.enabled false
TWO_WORKERS = "gateway-2w"  # gateway.workers 2 (loadtest/bench_gateways.py)
JSON, OPENAI = "envoy-json", "envoy-openai"
PATHS = ("direct", "gateway", UNTRACED, CONTROL_ON, CONTROL_OFF, "envoy", JSON, OPENAI)
CPU_SHOWN = {
    "direct": ("client", "triton"),
    "gateway": ("client", "gateway", "triton"),
    UNTRACED: ("client", UNTRACED, "triton"),
    CONTROL_ON: ("client", CONTROL_ON, "triton"),
    CONTROL_OFF: ("client", CONTROL_OFF, "triton"),
    "envoy": ("client", "envoy", "gateway", "triton"),
    JSON: ("client", "envoy", "gateway", "triton"),
    OPENAI: ("client", "envoy", "gateway", "triton"),
}


def load_echo(triton_target: str) -> None:
    """Loads loadtest/echo into the running Triton: its config and model.py go in the call."""
    config = text_format.Parse((ECHO / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    client = triton_sync.InferenceServerClient(triton_target)
    client.load_model(
        "echo",
        config=json_format.MessageToJson(config),
        files={"file:1/model.py": (ECHO / "1" / "model.py").read_bytes()},
    )
    client.close()


def _bytes_tensor(value: bytes) -> bytes:
    """Triton's raw BYTES encoding: a little-endian uint32 length, then the bytes."""
    return len(value).to_bytes(4, "little") + value


def direct_send(channel: grpc.aio.Channel) -> Send:
    """The gateway's Triton request, sent straight to Triton's stream API."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="echo")
    for name, datatype in (
        ("text_input", "BYTES"),
        ("max_tokens", "INT32"),
        ("stream", "BOOL"),
        ("temperature", "FP32"),
    ):
        request.inputs.add(name=name, datatype=datatype, shape=[1, 1])
    request.raw_input_contents.extend(
        [
            _bytes_tensor(plain_prompt(QUESTION).encode()),
            np.int32(MAX_TOKENS).tobytes(),
            np.bool_(False).tobytes(),  # a unary Generate asks for one response
            np.float32(0.0).tobytes(),
        ]
    )

    async def send(i: int) -> Reply:
        one = service_pb2.ModelInferRequest()
        one.CopyFrom(request)
        one.id = uuid.uuid4().hex
        answered = False
        try:  # read to the stream's end, as the gateway does
            async for response in stub.ModelStreamInfer(iter([one]), timeout=TIMEOUT_S):
                if response.error_message:
                    return Reply("UNAVAILABLE", reason=response.error_message)
                answered = answered or bool(response.infer_response.raw_output_contents)
        except grpc.aio.AioRpcError as exc:
            return Reply(exc.code().name, reason=exc.details() or "")
        return Reply() if answered else Reply("UNKNOWN", reason="no answer in the stream")

    return send


@dataclass
class Figures:
    """Per (path, rate): latencies of the answered requests (ms), failures, and CPU seconds
    each process spent while that path was loaded."""

    samples: dict[tuple[str, float], list[float]] = field(default_factory=dict)
    errors: dict[tuple[str, float], int] = field(default_factory=dict)
    sent: dict[tuple[str, float], int] = field(default_factory=dict)
    cpu_s: dict[tuple[str, float], dict[str, float]] = field(default_factory=dict)
    lease_waits: float = 0.0  # requests on the governed gateway that waited on the store

    def add(self, path: str, rate: float, samples: list[Sample], cpu: dict[str, float]) -> None:
        key = (path, rate)
        self.samples.setdefault(key, []).extend(
            s.latency_s * 1000 for s in samples if s.status == "OK"
        )
        self.errors[key] = self.errors.get(key, 0) + sum(s.status != "OK" for s in samples)
        self.sent[key] = self.sent.get(key, 0) + len(samples)
        spent = self.cpu_s.setdefault(key, {})
        for name, seconds in cpu.items():
            spent[name] = spent.get(name, 0.0) + seconds

    def p(self, path: str, rate: float, q: float) -> float:
        return percentile(self.samples.get((path, rate), []), q)

    def cpu_ms(self, path: str, rate: float) -> dict[str, float]:
        """CPU milliseconds per request, by process."""
        sent = max(1, self.sent.get((path, rate), 0))
        return {n: s * 1000 / sent for n, s in self.cpu_s.get((path, rate), {}).items()}


class Meter:
    """CPU seconds of the mesh's processes, each with its descendants (a Triton's model
    stubs, a gateway's workers), and of this one (the load generator)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def read(self) -> dict[str, float]:
        spent = {n: family_cpu_seconds(p) for n, p in self.pids.items()}
        return {"client": time.process_time()} | spent

    def since(self, before: dict[str, float]) -> dict[str, float]:
        return {n: v - before[n] for n, v in self.read().items()}


def start_variant(mesh: Mesh, name: str) -> tuple[str, int]:
    """A second gateway on the same Triton: telemetry off (UNTRACED), the control plane on
    or off (CONTROL_ON, CONTROL_OFF, both with a metrics port), or two workers on one port
    (TWO_WORKERS), what each costs. Returns its target and metrics port (0: none)."""
    region = mesh.regions[0].config
    metrics = free_port() if name in (CONTROL_ON, CONTROL_OFF) else 0
    gateway = dataclasses.replace(
        region.gateway,
        port=free_port(),
        openai_port=0,
        metrics_port=metrics,
        workers=2 if name == TWO_WORKERS else 1,
    )
    if name == TWO_WORKERS:
        variant = dataclasses.replace(region, gateway=gateway)
    elif name == UNTRACED:
        off = dataclasses.replace(region.telemetry, enabled=False)
        variant = dataclasses.replace(region, gateway=gateway, telemetry=off)
    else:
        control = dataclasses.replace(region.control, enabled=name == CONTROL_ON)
        variant = dataclasses.replace(region, gateway=gateway, control=control)
    mesh.start_gateway(name, variant)
    return f"127.0.0.1:{gateway.port}", metrics


def govern_demo(mesh: Mesh) -> None:
    """Limits and budgets for the demo tenant, far above what the run spends: every request
    is admitted against all six of them."""
    client = AdminClient(mesh.edge_target, mesh.config.mesh.demo_admin_key, 10.0)
    budgets = [
        apb.Budget(metric=metric, window=window, hard=1e9, soft=5e8)
        for metric, window in (("tokens", "day"), ("tokens", "month"), ("cost_usd", "day"))
    ] + [apb.Budget(metric="requests", window="day", hard=1e9)]
    tenant = apb.Tenant(
        name="demo", requests_per_second=1_000_000, tokens_per_minute=10**9, budgets=budgets
    )
    client.update_tenant(tenant)
    client.close()
    time.sleep(mesh.config.control.registry_refresh_s * 3)  # every gateway has read it


def lease_waits(metrics_port: int) -> float:
    """A gateway's ragmesh_control_lease_waits_total."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("ragmesh_control_lease_waits_total "):
                return float(line.split()[1])
    return 0.0


async def measure(
    mesh: Mesh, rates: list[float], rounds: int, seconds: float
) -> tuple[Figures, dict[float, float]]:
    key = mesh.config.mesh.demo_key
    region = mesh.regions[0]
    untraced, _ = start_variant(mesh, UNTRACED)
    control_on, control_metrics = start_variant(mesh, CONTROL_ON)
    control_off, _ = start_variant(mesh, CONTROL_OFF)
    govern_demo(mesh)
    request = ECHO_REQUEST
    gateway = f"gateway-{region.name}"
    processes = {
        "gateway": gateway,
        UNTRACED: UNTRACED,
        CONTROL_ON: CONTROL_ON,
        CONTROL_OFF: CONTROL_OFF,
        "envoy": "envoy",
    }
    processes["triton"] = f"triton-{region.name}"
    meter = Meter({label: mesh.processes[name].pid for label, name in processes.items()})
    figures, rss = Figures(), {}
    async with (
        grpc.aio.insecure_channel(region.config.gateway.triton_target) as to_triton,
        grpc.aio.insecure_channel(region.gateway_target) as to_gateway,
        grpc.aio.insecure_channel(untraced) as to_untraced,
        grpc.aio.insecure_channel(control_on) as to_control_on,
        grpc.aio.insecure_channel(control_off) as to_control_off,
        grpc.aio.insecure_channel(mesh.edge_target) as to_edge,
        aiohttp.ClientSession() as http,
    ):

        def generate(channel: grpc.aio.Channel) -> Send:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            return grpc_generate(stub, key, [request], TIMEOUT_S)

        sends: dict[str, Send] = {
            "direct": direct_send(to_triton),
            "gateway": generate(to_gateway),
            UNTRACED: generate(to_untraced),
            CONTROL_ON: generate(to_control_on),
            CONTROL_OFF: generate(to_control_off),
            "envoy": generate(to_edge),
            JSON: http_generate(
                http,
                f"{mesh.http_url}/v1/generate",
                key,
                [json_format.MessageToDict(request, preserving_proto_field_name=True)],
                TIMEOUT_S,
            ),
            OPENAI: chat(http, f"{mesh.http_url}/v1/chat/completions", key, TIMEOUT_S, CHAT),
        }
        for path in PATHS:  # warm-up: connections, the model's first call
            await Load(sends[path], steady(50.0)).run(duration_s=1.0)
        waits = lease_waits(control_metrics)
        for rate in rates:
            for _ in range(rounds):
                for path in PATHS:
                    before = meter.read()
                    samples = await Load(sends[path], steady(rate)).run(duration_s=seconds)
                    figures.add(path, rate, samples, meter.since(before))
                    await asyncio.sleep(0.5)  # let the last round's stragglers clear
            rss[rate] = rss_mib(mesh.processes[gateway].pid)
            print(f"  {rate:g} req/s done", flush=True)
    figures.lease_waits = lease_waits(control_metrics) - waits
    return figures, rss


async def soak(mesh: Mesh, rate: float, seconds: float) -> None:
    """Envoy-path load for `seconds`; the gateway's RSS every tenth of it, and its growth
    from the end of the first tenth (caches and pools warm) to the end."""
    key = mesh.config.mesh.demo_key
    pid = mesh.processes[f"gateway-{mesh.regions[0].name}"].pid
    request = ECHO_REQUEST
    print(f"\nsoak: {rate:g} req/s through Envoy for {seconds:g} s; gateway RSS (MB):")
    async with grpc.aio.insecure_channel(mesh.edge_target) as channel:
        send = grpc_generate(gateway_pb2_grpc.GatewayStub(channel), key, [request], TIMEOUT_S)
        readings, failed, sent = [], 0, 0
        for _ in range(10):
            samples = await Load(send, steady(rate)).run(duration_s=seconds / 10)
            failed += sum(s.status != "OK" for s in samples)
            sent += len(samples)
            readings.append(rss_mib(pid))
            print(f"  {readings[-1]:.1f}", end="", flush=True)
    growth = (readings[-1] - readings[0]) / readings[0]
    print(
        f"\n  {sent} requests, {failed} failed; RSS {readings[0]:.1f} -> {readings[-1]:.1f} MB "
        f"({growth:+.1%}), peak {max(readings):.1f} MB"
    )


def report(figures: Figures, rates: list[float], rss: dict[float, float]) -> dict[str, float]:
    """Prints the table; returns, per path, the highest rate whose added p99 stayed under
    GOOD_P99_ADDED_MS with no errors."""
    print(
        f"\n{'rate':>6} {'path':16} {'ok':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'added p50':>10} {'added p99':>10}  CPU ms per request"
    )
    best: dict[str, float] = {}
    for rate in rates:
        for path in PATHS:
            p50, p99 = figures.p(path, rate, 0.5), figures.p(path, rate, 0.99)
            added = f"{'':10} {'':10}"
            if path != "direct":
                a50 = p50 - figures.p("direct", rate, 0.5)
                a99 = p99 - figures.p("direct", rate, 0.99)
                added = f"{a50:10.2f} {a99:10.2f}"
                if a99 <= GOOD_P99_ADDED_MS and not figures.errors[(path, rate)]:
                    best[path] = max(best.get(path, 0.0), rate)
            cpu = figures.cpu_ms(path, rate)
            spent = " ".join(f"{n} {cpu[n]:.2f}" for n in CPU_SHOWN[path])
            ok = len(figures.samples.get((path, rate), []))
            print(
                f"{rate:6g} {path:16} {ok:6d} {figures.errors[(path, rate)]:6d} "
                f"{p50:8.2f} {p99:8.2f} {added}  {spent}"
            )
        print(f"{'':6} gateway RSS after this rate: {rss[rate]:.0f} MB")
    for path in PATHS[1:]:
        print(
            f"highest rate with added p99 <= {GOOD_P99_ADDED_MS:g} ms and no errors, {path}: "
            f"{best.get(path, 0.0):g} req/s"
        )
    for rate in rates:
        shown = []
        for native in ("envoy", JSON):
            a50 = figures.p(OPENAI, rate, 0.5) - figures.p(native, rate, 0.5)
            a99 = figures.p(OPENAI, rate, 0.99) - figures.p(native, rate, 0.99)
            shown.append(f"{a50:+.2f} ms p50 / {a99:+.2f} ms p99 over {native}")
        cpu = {p: figures.cpu_ms(p, rate)["gateway"] for p in ("envoy", JSON, OPENAI)}
        print(
            f"OpenAI API at {rate:g} req/s: {'; '.join(shown)}; gateway CPU per request "
            f"{cpu[OPENAI]:.3f} ms (gRPC {cpu['envoy']:.3f}, JSON {cpu[JSON]:.3f})"
        )
    governed = sum(len(figures.samples.get((CONTROL_ON, r), [])) for r in rates)
    for rate in rates:
        on = figures.cpu_ms(CONTROL_ON, rate)[CONTROL_ON]
        off = figures.cpu_ms(CONTROL_OFF, rate)[CONTROL_OFF]
        print(
            f"control plane at {rate:g} req/s: gateway CPU {on:.3f} ms per request on, "
            f"{off:.3f} ms off ({on - off:+.3f} ms)"
        )
    print(
        f"requests that waited on the store (a lease take), control plane on: "
        f"{figures.lease_waits:g} of {governed} after warm-up"
    )
    return best


def echo_mesh(data_dir: Path) -> MeshConfig:
    """One region with an `echo` tier, an instant model: its unary answers share one stream
    to Triton (`shared_stream`, make bench-triton-streams)."""
    base = isolated(first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1), data_dir)
    echo = TierConfig(model="echo", context_tokens=8192, shared_stream=True)
    return with_tier(base, "echo", echo)


def with_tier(base: MeshConfig, name: str, tier: TierConfig) -> MeshConfig:
    """`base` with one more tier, which the routing policy (isolated()'s copy, rewritten)
    prices and lets every tenant use."""
    policy_file = Path(base.control.policy_file)
    policy = yaml.safe_load(policy_file.read_text(encoding="utf-8"))
    policy["tiers"][name] = {"input_per_1k": 0.0005, "output_per_1k": 0.0015}
    policy["default"]["tiers"].append(name)
    policy_file.write_text(yaml.safe_dump(policy), encoding="utf-8")
    tiers = {**base.gateway.tiers, name: tier}
    return dataclasses.replace(base, gateway=dataclasses.replace(base.gateway, tiers=tiers))


def rates_arg(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r]


def litellm(rates: list[float], rounds: int, seconds: float) -> float:
    """LiteLLM's proxy against the instant mock; its best rate as report() counts it."""
    with LiteLLMSide() as side:
        print(
            f"\nLiteLLM {side.version} proxy (1 worker) against an instant OpenAI-style mock, "
            f"the same rounds, HTTP/JSON"
        )
        rows = asyncio.run(compare(side, rates, seconds, rounds, TIMEOUT_S))
    litellm_report(rows)
    good = [
        row.rate
        for row in rows
        if not any(s.status != "OK" for s in row.proxied)
        and percentile([s.latency_s * 1000 for s in row.proxied], 0.99)
        - percentile([s.latency_s * 1000 for s in row.direct], 0.99)
        <= GOOD_P99_ADDED_MS
    ]
    return max(good, default=0.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=rates_arg, default=[100.0, 500.0, 1000.0, 2000.0])
    parser.add_argument("--litellm-rates", type=rates_arg, default=[25.0, 50.0, 100.0, 200.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per path, per round")
    parser.add_argument("--soak", type=float, default=0.0, help="then N s at --soak-rate")
    parser.add_argument("--soak-rate", type=float, default=300.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp, Mesh(echo_mesh(Path(tmp))) as mesh:
        load_echo(mesh.regions[0].config.gateway.triton_target)
        print(
            f"echo model loaded; {args.rounds} rounds x {args.seconds:g} s per path and rate, "
            "open loop, latency from intended send times"
        )
        figures, rss = asyncio.run(measure(mesh, args.rates, args.rounds, args.seconds))
        if args.soak:
            asyncio.run(soak(mesh, args.soak_rate, args.soak))
    best = report(figures, args.rates, rss)
    if not args.litellm_rates:
        return
    if not (VENV / ".installed").exists():
        print(f"\n{VENV.name} not installed (`make bench-overhead` builds it): no LiteLLM run")
        return
    theirs = litellm(args.litellm_rates, args.rounds, args.seconds)
    ours = best.get("envoy", 0.0)
    ratio = f"{ours / theirs:.1f}x" if theirs else "LiteLLM met it at no rate tried"
    print(
        f"\nhighest rate with added p99 <= {GOOD_P99_ADDED_MS:g} ms and no errors: "
        f"ragmesh (Envoy + gateway) {ours:g} req/s, LiteLLM {theirs:g} req/s ({ratio})"
    )


if __name__ == "__main__":
    main()
