"""Latency of /v1/generate through Envoy, one request at a time, on a mesh it starts.

    python -m loadtest.latency --requests 200 [--tier economy]

The default tier, economy, has no LLM, so the figures are the request path
itself: edge, gateway, query embedding, Milvus search. `--tier standard` adds the CPU LLM.
Requests skip the answer cache (`bypass_cache`), except in the last run, which repeats
the questions to time cache hits.
Starts its own mesh on free ports with a fresh data directory (nothing else needs to
run), ingests the sample corpus, then times sequential HTTP/JSON and gRPC generate
calls through the edge and prints p50/p90/p99.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ragmesh.v1 import gateway_pb2 as pb

from services.client.files import read_document
from services.client.gateway import Client
from services.client.sample_corpus import QUESTIONS, harvest
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.supervisor.launcher import ROOT, Mesh, isolated


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile; 0.0 for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def timed(call: Callable[[str], object], requests: int) -> list[float]:
    for question in QUESTIONS:  # warm-up: first calls load caches and connections
        call(question)
    samples = []
    for i in range(requests):
        started = time.perf_counter()
        call(QUESTIONS[i % len(QUESTIONS)])
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def http_call(url: str, key: str, tier: str) -> Callable[[str], object]:
    def call(question: str) -> object:
        request = urllib.request.Request(
            url + "/v1/generate",
            data=json.dumps({"query": question, "tier": tier, "bypass_cache": True}).encode(),
            headers={"x-api-key": key, "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    return call


def report(name: str, samples: list[float]) -> None:
    print(
        f"{name:28} n={len(samples):4}  p50 {statistics.median(samples):7.1f} ms  "
        f"p90 {percentile(samples, 0.9):7.1f} ms  p99 {percentile(samples, 0.99):7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.latency")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tier", default="economy")
    args = parser.parse_args()
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    with tempfile.TemporaryDirectory() as data, Mesh(isolated(base, Path(data))) as mesh:
        key = mesh.config.mesh.demo_key
        client = Client(mesh.edge_target, key)
        documents = [read_document(p) for p in harvest(Path(data) / "corpus")]
        started = time.perf_counter()
        chunks = client.ingest(documents, progress=False).complete().chunks
        print(
            f"ingested {len(documents)} documents, {chunks} chunks in "
            f"{time.perf_counter() - started:.1f}s"
        )
        calls = timed(http_call(mesh.http_url, key, args.tier), args.requests)
        report(f"HTTP/JSON /v1/generate {args.tier}", calls)

        def grpc_call(cache: bool) -> Callable[[str], object]:
            return lambda q: client.ask(
                pb.GenerateRequest(query=q, tier=args.tier, bypass_cache=not cache)
            )

        report(f"gRPC Generate {args.tier}", timed(grpc_call(False), args.requests))
        # The same questions again, answered from the answer cache (retrieval still runs).
        report("gRPC Generate, cache hit", timed(grpc_call(True), args.requests))
        client.close()


if __name__ == "__main__":
    main()
