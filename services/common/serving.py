"""gRPC server plumbing every service shares: health, reflection, lifecycle, logging."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import telemetry
from services.common.errors import FailedPrecondition
from services.common.interceptor import CallInterceptor
from services.config.mesh import MeshConfig
from services.config.telemetry import TelemetryConfig

LOGGER = logging.getLogger(__name__)
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# Generous limits: a document up to the gateway's own size limit (MAX_CONTENT_BYTES, 20 MiB of
# a file's content) must fit in one message.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
# Marks a search whose caller degrades without it (a generation's sources): Envoy's internal
# listener gives each region half of its time (services/edge/render.py), not the deadline.
DEGRADABLE = ("x-ragmesh-degradable", "1")
# How long a stopping server lets its calls in flight finish (SIGTERM to exit).
DRAIN_S = 10.0
SAME_SIGNAL_S = 1.0
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
)


def new_server(layer: str, tracing: TelemetryConfig, reuse_port: bool = False) -> grpc.aio.Server:
    """A server whose every call runs in its trace (a span when the trace is sampled), is
    timed in `layer`'s metrics, and whose errors map to gRPC status by the one table.

    With telemetry off (`enabled` false): errors are mapped, nothing else. `reuse_port`:
    other processes may bind its port too (SO_REUSEPORT; services/gateway/workers.py);
    otherwise a port in use fails the bind."""
    interceptor = CallInterceptor(layer, tracing.sampled, telemetry_on=tracing.enabled)
    options = (*SERVER_OPTIONS, ("grpc.so_reuseport", int(reuse_port)))
    return grpc.aio.server(interceptors=[interceptor], options=options)


def new_channel(target: str) -> grpc.aio.Channel:
    """A client channel; callers send the trace context as `telemetry.traceparent()`
    metadata (a client span per call would double the spans for nothing: the server's span
    is the call's)."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def bind(server: grpc.aio.Server, host: str, port: int) -> int:
    """Binds host:port (0 picks a free port) and returns the bound port."""
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    return bound


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health.aio.HealthServicer:
    """Registers grpc.health.v1 (every service SERVING) and server reflection."""
    names = list(service_names)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            HEALTH,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return servicer


async def set_serving(servicer: health.aio.HealthServicer, names: Iterable[str], up: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *names]:
        await servicer.set(name, status)


async def run_until_signal(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    names: Iterable[str],
    grace_s: float = DRAIN_S,
    drain: Callable[[float], Awaitable[None]] | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then drains in-flight calls for up to `grace_s`.

    Health turns NOT_SERVING first, so Envoy stops sending new requests. `drain(grace_s)`
    runs beside the server's own drain (the gateway ends its open streams with an error
    before the grace runs out). A second signal during the drain exits at once, unless it
    comes within SAME_SIGNAL_S of the first: that is the same stop, sent twice (a Ctrl-C
    reaches a gateway's workers and their supervisor, which passes it on).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    first = 0.0

    def on_signal() -> None:
        nonlocal first
        if stop.is_set():
            if time.monotonic() - first < SAME_SIGNAL_S:
                return
            LOGGER.warning("second signal: exiting without draining")
            os._exit(130)
        first = time.monotonic()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    LOGGER.info("draining for up to %.1fs", grace_s)
    await set_serving(health_servicer, names, up=False)
    await stop_draining(server, grace_s, drain)


async def stop_draining(
    server: grpc.aio.Server, grace_s: float | None, drain: Callable[[float], Awaitable[None]] | None
) -> None:
    """`server.stop(grace_s)`, with `drain(grace_s)` running beside it when given."""
    if drain is None or grace_s is None:
        await server.stop(grace_s)
        return
    await asyncio.gather(server.stop(grace_s), drain(grace_s))


class PlaneServer(Protocol):
    """What a gRPC plane's build_server returns."""

    port: int

    async def serve(self) -> None: ...


def run_plane(plane: str, build: Callable[[MeshConfig], PlaneServer]) -> None:
    """A gRPC plane's entry point, `python -m services.<plane>`: the mesh config (`build(mesh)`
    makes the plane's server from its sections), its telemetry set up, served until a signal,
    and queued spans exported on the way out."""

    async def serve(config_path: str) -> None:
        mesh = MeshConfig.load(config_path)
        config = getattr(mesh, plane)
        tracing = telemetry.setup(f"ragmesh-{plane}", config.region, mesh.telemetry)
        server = build(mesh)
        LOGGER.info(
            "%s listening on %s:%d (region %s)", plane, config.host, server.port, config.region
        )
        try:
            await server.serve()
        finally:
            tracing.shutdown()

    main(f"python -m services.{plane}", serve)


def arguments(prog: str) -> argparse.Namespace:
    """A service's flags, `--config PATH --log-level LEVEL`, parsed; its JSON logs set up."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", default="config/mesh.yaml")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    telemetry.log_json(f"ragmesh-{prog.rsplit('.', 1)[-1]}", args.log_level)
    return args


def main(prog: str, serve: Callable[[str], Coroutine[Any, Any, None]]) -> None:
    """A service's entry point: `arguments(prog)`, then `serve(PATH)`. Data it may not serve
    (FailedPrecondition at start: a schema version it cannot read) ends it with status 2 and
    the reason logged, not a traceback."""
    args = arguments(prog)
    try:
        uvloop.run(serve(args.config))  # libuv's event loop: less CPU per call than asyncio's
    except FailedPrecondition as exc:
        LOGGER.critical("%s cannot start: %s", prog, exc.message)
        raise SystemExit(2) from None
