"""Prometheus metrics every service shares: per-layer request latency and outcome.

Each service serves its metrics on its section's `host` and `metrics_port` (127.0.0.1 in the
local mesh, every interface in a pod); the one server interceptor
(services/common/interceptor.py) times every call of the ragmesh APIs and labels it with the
gRPC status the caller gets. Buckets are dense from 5 ms to 30 s, so p95 and p99 are
readable at every layer, from a cache hit to a CPU LLM's answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, start_http_server

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_SECONDS = Histogram(
    "ragmesh_request_duration_seconds",
    "Server-side duration of each call, by layer, method and gRPC status",
    ["layer", "method", "code"],
    buckets=BUCKETS,
)


Timer = Callable[[str, float], None]  # (the status's name, seconds)


def timer(layer: str, method: str) -> Timer:
    """Observes a call of `method` in REQUEST_SECONDS; each status's child looked up once
    (the gRPC interceptor's calls and the OpenAI API's requests alike)."""
    children: dict[str, Any] = {}

    def observe(code: str, seconds: float) -> None:
        child = children.get(code)
        if child is None:
            child = children[code] = REQUEST_SECONDS.labels(layer, method, code)
        child.observe(seconds)

    return observe


def serve(port: int, host: str, registry: CollectorRegistry = REGISTRY) -> WSGIServer | None:
    """Starts the metrics endpoint of `registry` on host:port in a daemon thread and returns
    its server; port 0 means none. `host` is the plane's (`gateway.host`, `retrieval.host`)."""
    if not port:
        return None
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
