"""The full RAG path on the CPU under load: end-to-end latency and time to first token.

    python -m loadtest.bench_rag [--requests N] [--concurrency 1,4,16]

Each request is a GenerateStream call through Envoy (gRPC) on the `standard` tier, the CPU
LLM: the gateway embeds the question (Triton's embedder), searches Milvus through
retrieval, prompts SmolLM2 and streams 64 tokens at most. Answers skip the cache. For each
concurrency C, C clients run a closed loop (each sends its next request when its last one
ends) until N requests (at least C) are done. The model serves one request at a time, so C
clients mostly measure its queue, and a request still queued when the gateway's budget
(gateway.request_timeout_s, 30 s) runs out fails with DEADLINE_EXCEEDED: `--budget-s 300`
gives the benchmark's mesh a longer one, to see the queue instead of the refusals.

Starts its own one-region mesh on free ports with a fresh data directory, ingests the sample
corpus, times one request alone, then prints a table: p50/p99 end to end and time to first
token (the first `token` message) and completion tokens per second over the run, all of
answers by the standard tier; errors; and fallbacks: answers by another tier (the economy
tier answers, degraded, while the standard tier's breaker is open, e.g. after three
requests in a row ran out of budget in its queue). Each level starts with the breakers
closed. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.latency import percentile
from services.client.files import read_document
from services.client.gateway import Client
from services.client.sample_corpus import QUESTIONS, harvest
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.supervisor.launcher import ROOT, Mesh, isolated

TIER = "standard"
MAX_TOKENS = 64
# Questions the sample corpus (the standard library's docstrings) answers.


@dataclass(frozen=True)
class Sample:
    total_s: float
    first_token_s: float | None  # None: no token came
    completion_tokens: int
    status: str
    tier: str  # the tier that answered; empty on an error


@dataclass(frozen=True)
class Target:
    address: str  # the edge's gRPC address
    key: str
    timeout_s: float  # the client's deadline: past the gateway's budget, which ends it first


async def one(stub: gateway_pb2_grpc.GatewayStub, target: Target, question: str) -> Sample:
    request = pb.GenerateRequest(
        query=question, tier=TIER, max_tokens=MAX_TOKENS, bypass_cache=True
    )
    started = time.perf_counter()
    first_token_s: float | None = None
    final = pb.GenerateResponse()
    try:
        async for event in stub.GenerateStream(
            request, timeout=target.timeout_s, metadata=(("x-api-key", target.key),)
        ):
            if event.HasField("token") and first_token_s is None:
                first_token_s = time.perf_counter() - started
            elif event.HasField("final"):
                final = event.final
        status = "OK"
    except grpc.aio.AioRpcError as e:
        status = e.code().name
    return Sample(
        time.perf_counter() - started,
        first_token_s,
        final.usage.completion_tokens,
        status,
        final.tier,
    )


async def closed_loop(target: Target, concurrency: int, requests: int) -> list[Sample]:
    """`concurrency` clients, each sending its next request as soon as its last one ends."""
    samples: list[Sample] = []
    sent = 0

    async def client(stub: gateway_pb2_grpc.GatewayStub) -> None:
        nonlocal sent
        while sent < requests:
            question = QUESTIONS[sent % len(QUESTIONS)]
            sent += 1
            samples.append(await one(stub, target, question))

    async with grpc.aio.insecure_channel(target.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        await asyncio.gather(*(client(stub) for _ in range(concurrency)))
    return samples


def row(concurrency: int, samples: list[Sample], elapsed_s: float) -> str:
    ok = [s for s in samples if s.status == "OK" and s.tier == TIER]
    total = [s.total_s * 1000 for s in ok]
    ttft = [s.first_token_s * 1000 for s in ok if s.first_token_s is not None]
    tokens = sum(s.completion_tokens for s in ok)
    errors = Counter(s.status for s in samples if s.status != "OK")
    return (
        f"{concurrency:>11} {len(samples):>8} {percentile(total, 0.5):>8.0f} "
        f"{percentile(total, 0.99):>8.0f} {percentile(ttft, 0.5):>9.0f} "
        f"{percentile(ttft, 0.99):>9.0f} {tokens / elapsed_s:>9.1f} {errors.total():>6} "
        f"{sum(s.status == 'OK' and s.tier != TIER for s in samples):>8}  "
        + ", ".join(f"{code} x{n}" for code, n in errors.most_common())
    ).rstrip()


HEADER = (
    f"{'concurrency':>11} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'TTFT p50':>9} "
    f"{'TTFT p99':>9} {'tokens/s':>9} {'errors':>6} {'fallback':>8}"
)


async def bench(target: Target, levels: list[int], requests: int, settle_s: float) -> None:
    alone = await closed_loop(target, 1, 1)  # warm-up, and the figure to size runs by
    print(f"one request alone: {alone[0].total_s:.1f} s, {alone[0].status}")
    print(f"\n{TIER} tier, max_tokens={MAX_TOKENS}, through Envoy (gRPC), cache skipped")
    print(HEADER)
    for concurrency in levels:
        await asyncio.sleep(settle_s)  # every breaker past its open time
        started = time.perf_counter()
        samples = await closed_loop(target, concurrency, max(requests, concurrency))
        print(row(concurrency, samples, time.perf_counter() - started), flush=True)
    print(
        f"(ms, of {TIER}-tier answers; TTFT: time to the first token; tokens/s: their "
        "completion tokens over the run; fallback: answered by another tier)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_rag")
    # About 6 s a request on an idle 2-core machine: 8 + 8 + 16 requests take ~3 minutes.
    parser.add_argument("--requests", type=int, default=8, help="per level (at least C)")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    parser.add_argument("--budget-s", type=float, help="the gateway's request_timeout_s")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    if args.budget_s:  # Envoy's route timeout (60 s) bounds a request too
        gateway = dataclasses.replace(base.gateway, request_timeout_s=args.budget_s)
        edge = dataclasses.replace(base.edge, route_timeout_s=args.budget_s + 5.0)
        base = dataclasses.replace(base, gateway=gateway, edge=edge)
    with tempfile.TemporaryDirectory() as data, Mesh(isolated(base, Path(data))) as mesh:
        key = mesh.config.mesh.demo_key
        client = Client(mesh.edge_target, key)
        documents = [read_document(p) for p in harvest(Path(data) / "corpus")]
        started = time.perf_counter()
        # One document a call: each call has the gateway's 30 s budget, which a batch of
        # eight can overrun while the CPU is busy with other work.
        chunks = sum(client.ingest([d], progress=False).complete().chunks for d in documents)
        client.close()
        print(
            f"ingested {len(documents)} documents, {chunks} chunks in "
            f"{time.perf_counter() - started:.1f}s"
        )
        budget_s = mesh.config.gateway.request_timeout_s
        print(f"gateway budget {budget_s:.0f} s a request")
        target = Target(mesh.edge_target, key, budget_s + 10.0)
        settle_s = mesh.config.gateway.breaker_open_s
        asyncio.run(bench(target, levels, args.requests, settle_s))


if __name__ == "__main__":
    main()
