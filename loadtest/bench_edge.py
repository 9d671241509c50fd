"""Envoy's worker threads in front of the gateway: its default (one per core) against one.

    make bench-edge   # python -m loadtest.bench_edge [--rates 200,400,600] [--seconds 4]

One mesh (the `echo` tier of bench-overhead, the control plane on, requests that skip
retrieval) and a second Envoy beside the mesh's own, from the same rendered config on other
ports, started with `--concurrency 1`. Both send to the same gateway. The load generator
opens CHANNELS connections to each (so that every Envoy worker thread gets some: one
connection stays on one thread), sends open-loop Generate calls round robin over them,
alternating the two Envoys at each rate, rounds interleaved. Prints, per Envoy and rate,
p50 / p99, errors, and the CPU a request of Envoy, the gateway and the whole path.
Asserts nothing: everything shares this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
from pathlib import Path

import grpc
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.bench_overhead import ECHO_REQUEST, Meter, echo_mesh, govern_demo, load_echo
from loadtest.latency import percentile
from loadtest.openloop import Load, grpc_generate, steady
from services.edge.render import write as write_envoy_config
from services.supervisor.launcher import Mesh, _grpc_serving, envoy_binary, free_port
from services.supervisor.processes import Process, wait_until

CHANNELS = 8
TIMEOUT_S = 5.0
ENVOYS = {"envoy default threads": "envoy", "envoy --concurrency 1": "envoy-1"}


def _second_envoy(mesh: Mesh, folder: Path) -> tuple[Process, str]:
    """An Envoy of the mesh's own config on free ports, with one worker thread."""
    edge = dataclasses.replace(
        mesh.config.edge,
        listen_port=free_port(),
        internal_port=free_port(),
        admin_port=free_port(),
    )
    config = dataclasses.replace(mesh.config, edge=edge)
    path = write_envoy_config(config, folder / "envoy-1.yaml")
    argv = [str(envoy_binary()), "-c", str(path), "--disable-hot-restart", "--concurrency", "1"]
    argv += ["--log-level", "warn"]
    process = Process("envoy-1", argv, folder / "envoy-1.log")
    target = f"127.0.0.1:{edge.listen_port}"
    wait_until(lambda: _grpc_serving(target), process, 60.0)
    return process, target


async def _measure(
    mesh: Mesh, targets: dict[str, str], meter: Meter, args: argparse.Namespace
) -> dict[tuple[str, float], list[tuple[list[float], int, dict[str, float]]]]:
    key = mesh.config.mesh.demo_key
    channels = {
        name: [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CHANNELS)
        ]
        for name, target in targets.items()
    }
    sends = {}
    for name, opened in channels.items():
        each = [
            grpc_generate(gateway_pb2_grpc.GatewayStub(c), key, [ECHO_REQUEST], TIMEOUT_S)
            for c in opened
        ]
        sends[name] = lambda i, each=each: each[i % CHANNELS](i)
    for send in sends.values():  # warm-up: every connection, the first calls
        await Load(send, steady(50.0)).run(duration_s=1.0)
    found: dict[tuple[str, float], list[tuple[list[float], int, dict[str, float]]]] = {}
    for rate in args.rates:
        for _ in range(args.rounds):
            for name, send in sends.items():
                before = meter.read()
                samples = await Load(send, steady(rate)).run(duration_s=args.seconds)
                spent = meter.since(before)
                ok = [s.latency_s * 1e3 for s in samples if s.status == "OK"]
                found.setdefault((name, rate), []).append(
                    (
                        ok,
                        len(samples) - len(ok),
                        {n: v / len(samples) * 1e3 for n, v in spent.items()},
                    )
                )
    for opened in channels.values():
        for channel in opened:
            await channel.close()
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,400,600")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",")]
    with (
        tempfile.TemporaryDirectory(prefix="edge-") as tmp,
        Mesh(echo_mesh(Path(tmp) / "mesh")) as mesh,
    ):
        load_echo(mesh.regions[0].config.gateway.triton_target)
        govern_demo(mesh)
        second, target = _second_envoy(mesh, Path(tmp))
        try:
            region = mesh.regions[0].name
            meter = Meter(
                {
                    "envoy": mesh.processes["envoy"].pid,
                    "envoy-1": second.pid,
                    "gateway": mesh.processes[f"gateway-{region}"].pid,
                    "triton": mesh.processes[f"triton-{region}"].pid,
                }
            )
            targets = {
                "envoy default threads": mesh.edge_target,
                "envoy --concurrency 1": target,
            }
            found = asyncio.run(_measure(mesh, targets, meter, args))
        finally:
            second.stop(grace_s=2.0)
    print(
        f"\nGenerate through Envoy, open loop, {CHANNELS} client connections, "
        f"{args.rounds} x {args.seconds:g} s each (CPU ms a request: medians of rounds)"
    )
    print(
        f"{'rate':>6} {'edge':24} {'errors':>6} {'p50':>7} {'p99':>8} {'envoy':>6} "
        f"{'gateway':>7} {'path':>6}"
    )
    for (name, rate), rounds in found.items():
        latencies = [x for ok, _, _ in rounds for x in ok]
        errors = sum(e for _, e, _ in rounds)
        cpu = {n: statistics.median(c[n] for _, _, c in rounds) for n in rounds[0][2]}
        envoy = cpu[ENVOYS[name]]
        path = envoy + cpu["gateway"] + cpu["triton"] + cpu["client"]
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(
            f"{rate:6.0f} {name:24} {errors:6d} {p50:7.2f} {p99:8.2f} {envoy:6.3f} "
            f"{cpu['gateway']:7.3f} {path:6.3f}"
        )


if __name__ == "__main__":
    main()
