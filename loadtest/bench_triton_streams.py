"""Unary answers toward Triton: a gRPC stream per request against the SharedStream.

    make bench-triton-streams   # python -m loadtest.bench_triton_streams --requests 3000

Against the instant `echo` model (loadtest/echo, decoupled like every tier) in a Triton this
benchmark starts alone, the gateway's own call (`TritonLLM.stream`, which every answer
takes): (a) a ModelStreamInfer per request, as a tier does by default; (b) the same, the
request written to the call rather than fed by an iterator; (c) the SharedStream, one
ModelStreamInfer that carries every request, told apart by id (a tier's `shared_stream`).
Closed loop at `--concurrency`, rounds interleaved, medians of rounds. Prints the client's
CPU a request (this process, time.process_time), Triton's (its process and the model's
stub), throughput and p50/p99, and the ratios (a)/(c). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from loadtest.bench_overhead import load_echo
from loadtest.procfs import family_cpu_seconds
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.supervisor.launcher import ROOT, Mesh, isolated
from services.triton.client import TritonClient
from services.triton.llm import Sampling, TritonLLM, _request

SAMPLING = Sampling(max_tokens=16)
PROMPT = "What does functools.lru_cache do? " * 4


async def _closed_loop(
    send: Callable[[], Awaitable[object]], requests: int, concurrency: int
) -> list[float]:
    latencies: list[float] = []
    left = iter(range(requests))

    async def user() -> None:
        for _ in left:
            started = time.perf_counter()
            await send()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return latencies


Row = tuple[float, float, float, float, float]  # CPU ms/req (client, Triton), req/s, p50, p99


async def _measure(target: str, triton_pid: int, args: argparse.Namespace) -> dict[str, list[Row]]:
    client = TritonClient(target)
    llm = TritonLLM(client)

    def answer(shared: bool) -> Callable[[], Awaitable[object]]:
        async def send() -> object:
            deltas = llm.stream(
                "echo",
                "",
                PROMPT,
                SAMPLING,
                stream=False,
                timeout_s=10.0,
                headers={},
                shared=shared,
            )
            return [delta async for delta in deltas]

        return send

    async def written() -> object:
        """A stream per request, written to rather than fed by an iterator (no task that
        consumes it): measured, it saves nothing."""
        call = client.stub.ModelStreamInfer(timeout=10.0)
        await call.write(_request("echo", "", PROMPT, SAMPLING, False))
        await call.done_writing()
        return [response async for response in call]

    variants = {
        "a stream per request": answer(False),
        "the same, call.write": written,
        "SharedStream": answer(True),
    }
    rows: dict[str, list[Row]] = {name: [] for name in variants}
    for send in variants.values():  # warm each: the channel, the stub's first calls
        await _closed_loop(send, 200, args.concurrency)
    for _ in range(args.rounds):
        for name, send in variants.items():
            cpu, triton = time.process_time(), family_cpu_seconds(triton_pid)
            wall = time.perf_counter()
            latencies = await _closed_loop(send, args.requests, args.concurrency)
            wall = time.perf_counter() - wall
            rows[name].append(
                (
                    (time.process_time() - cpu) / args.requests * 1e3,
                    (family_cpu_seconds(triton_pid) - triton) / args.requests * 1e3,
                    args.requests / wall,
                    statistics.median(latencies) * 1e3,
                    statistics.quantiles(latencies, n=100)[98] * 1e3,
                )
            )
    await llm.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    with tempfile.TemporaryDirectory() as data:
        config = isolated(base, Path(data))
        with Mesh(config, planes=("triton",)) as mesh:
            target = mesh.regions[0].config.gateway.triton_target
            load_echo(target)
            rows = asyncio.run(_measure(target, mesh.processes["triton-local"].pid, args))
    print(
        f"\n{args.requests} unary answers of `echo` a round, concurrency {args.concurrency}, "
        f"{args.rounds} rounds interleaved (median of rounds)"
    )
    print(
        f"{'':24} {'client CPU ms/req':>17} {'Triton CPU ms/req':>17} {'req/s':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7}"
    )
    medians = {}
    for name, runs in rows.items():
        medians[name] = [statistics.median(column) for column in zip(*runs, strict=True)]
        client_cpu, triton_cpu, rate, p50, p99 = medians[name]
        print(f"{name:24} {client_cpu:17.3f} {triton_cpu:17.3f} {rate:7.0f} {p50:7.2f} {p99:7.2f}")
    each, shared = medians["a stream per request"], medians["SharedStream"]
    print(
        f"a stream per request / SharedStream: client CPU {each[0] / shared[0]:.2f}x, "
        f"Triton CPU {each[1] / shared[1]:.2f}x, throughput {each[2] / shared[2]:.2f}x"
    )


if __name__ == "__main__":
    main()
