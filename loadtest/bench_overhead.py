"""What the gateway and the edge add to a model call, side by side with calling Triton directly.

    python -m loadtest.bench_overhead [--rates 100,500,1000,2000] [--rounds 3] [--seconds 4]

Starts a one-region mesh on free ports and loads `echo` (loadtest/echo: answers each request
with its own text at once) into its Triton through the model control API; the gateway gets
an `echo` tier. Then, at each fixed rate, open-loop load (latency from each intended send
time) over three paths, in interleaved rounds:

- direct: client -> Triton's stream API, the request the gateway would send (lean client);
- gateway: client -> gateway -> Triton (Generate, echo tier, skip_retrieval, no cache);
- envoy: client -> Envoy -> gateway -> Triton (the same call through the edge).

Prints, per rate, each path's p50/p99 and the added p50/p99 of the gateway and of Envoy plus
the gateway against direct; the gateway's RSS; and the highest rate whose added p99 stays
under 10 ms. With `.venv-litellm` present (`make bench-overhead` builds it), LiteLLM's proxy
runs in the same run against an instant OpenAI-style mock, and its added latency is printed
beside ours. The load generator shares the machine's cores with what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton_sync
from google.protobuf import json_format, text_format
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from loadtest.latency import percentile
from loadtest.openloop import Load, Reply, Send, grpc_generate, steady
from services.gateway.config import TierConfig
from services.gateway.prompt import plain_prompt
from services.mesh.config import MeshConfig
from services.mesh.launcher import ROOT, Mesh, isolated
from services.mesh.regions import first

ECHO = Path(__file__).parent / "echo"
QUESTION = "How do I parse a JSON string?"
MAX_TOKENS = 16
TIMEOUT_S = 5.0  # an overloaded path shows as errors, not as requests queued for minutes
GOOD_P99_ADDED_MS = 10.0
PATHS = ("direct", "gateway", "envoy")


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
            np.bool_(True).tobytes(),
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
    samples: dict[tuple[str, float], list[float]] = field(default_factory=dict)  # ms
    errors: dict[tuple[str, float], int] = field(default_factory=dict)

    def add(self, path: str, rate: float, results: list[tuple[float, str]]) -> None:
        self.samples.setdefault((path, rate), []).extend(ms for ms, s in results if s == "OK")
        failed = sum(s != "OK" for _, s in results)
        self.errors[(path, rate)] = self.errors.get((path, rate), 0) + failed

    def p(self, path: str, rate: float, q: float) -> float:
        return percentile(self.samples.get((path, rate), []), q)


async def one_round(send: Send, rate: float, seconds: float) -> list[tuple[float, str]]:
    samples = await Load(send, steady(rate)).run(duration_s=seconds)
    return [(s.latency_s * 1000, s.status) for s in samples]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(
    mesh: Mesh, rates: list[float], rounds: int, seconds: float
) -> tuple[Figures, dict[float, float]]:
    key = mesh.config.mesh.demo_key
    region = mesh.regions[0]
    request = pb.GenerateRequest(
        query=QUESTION,
        tier="echo",
        max_tokens=MAX_TOKENS,
        skip_retrieval=True,
        bypass_cache=True,
    )
    figures, rss = Figures(), {}
    gateway_pid = mesh.processes[f"gateway-{region.name}"].pid
    async with (
        grpc.aio.insecure_channel(region.config.gateway.triton_target) as to_triton,
        grpc.aio.insecure_channel(region.gateway_target) as to_gateway,
        grpc.aio.insecure_channel(mesh.edge_target) as to_edge,
    ):
        sends: dict[str, Send] = {
            "direct": direct_send(to_triton),
            "gateway": grpc_generate(
                gateway_pb2_grpc.GatewayStub(to_gateway), key, [request], TIMEOUT_S
            ),
            "envoy": grpc_generate(
                gateway_pb2_grpc.GatewayStub(to_edge), key, [request], TIMEOUT_S
            ),
        }
        for path in PATHS:  # warm-up: connections, the model's first call
            await one_round(sends[path], 50.0, 1.0)
        for rate in rates:
            for _ in range(rounds):
                for path in PATHS:
                    figures.add(path, rate, await one_round(sends[path], rate, seconds))
                    await asyncio.sleep(0.5)  # let the last round's stragglers clear
            rss[rate] = rss_mb(gateway_pid)
            print(f"  {rate:g} req/s done", flush=True)
    return figures, rss


def report(figures: Figures, rates: list[float], rss: dict[float, float]) -> None:
    print(
        f"\n{'rate':>6} {'path':8} {'ok':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'added p50':>10} {'added p99':>10}"
    )
    best: dict[str, float] = {}
    for rate in rates:
        for path in PATHS:
            p50, p99 = figures.p(path, rate, 0.5), figures.p(path, rate, 0.99)
            added = ""
            if path != "direct":
                a50 = p50 - figures.p("direct", rate, 0.5)
                a99 = p99 - figures.p("direct", rate, 0.99)
                added = f"{a50:10.2f} {a99:10.2f}"
                if a99 <= GOOD_P99_ADDED_MS and not figures.errors[(path, rate)]:
                    best[path] = max(best.get(path, 0.0), rate)
            ok = len(figures.samples.get((path, rate), []))
            print(
                f"{rate:6g} {path:8} {ok:6d} {figures.errors[(path, rate)]:6d} "
                f"{p50:8.2f} {p99:8.2f} {added}"
            )
        print(f"{'':6} gateway RSS after this rate: {rss[rate]:.0f} MB")
    for path in PATHS[1:]:
        print(
            f"highest rate with added p99 <= {GOOD_P99_ADDED_MS:g} ms and no errors, {path}: "
            f"{best.get(path, 0.0):g} req/s"
        )


def echo_mesh(data_dir: Path) -> MeshConfig:
    base = isolated(first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1), data_dir)
    tiers = {**base.gateway.tiers, "echo": TierConfig(model="echo", context_tokens=8192)}
    return dataclasses.replace(base, gateway=dataclasses.replace(base.gateway, tiers=tiers))


def rates_arg(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r]


def main(argv: list[str] | None = None, extra: Callable[[], None] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=rates_arg, default=[100.0, 500.0, 1000.0, 2000.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per path, per round")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp, Mesh(echo_mesh(Path(tmp))) as mesh:
        load_echo(mesh.regions[0].config.gateway.triton_target)
        print(
            f"echo model loaded; {args.rounds} rounds x {args.seconds:g} s per path and rate, "
            "open loop, latency from intended send times"
        )
        figures, rss = asyncio.run(measure(mesh, args.rates, args.rounds, args.seconds))
    report(figures, args.rates, rss)


if __name__ == "__main__":
    main()
