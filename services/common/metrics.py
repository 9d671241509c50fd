"""Prometheus metrics every service shares: per-layer request latency and outcome.

Each service serves its metrics on 127.0.0.1 (`metrics_port` of its section); the one
server interceptor (services/common/interceptor.py) times every call of the ragmesh APIs
and labels it with the gRPC status the caller gets. Buckets are dense from 5 ms to 30 s, so
p95 and p99 are readable at every layer, from a cache hit to a CPU LLM's answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import Histogram, start_http_server

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


def serve(port: int) -> None:
    """Starts the metrics endpoint in a daemon thread; port 0 means none."""
    if port:
        start_http_server(port, addr="127.0.0.1")
