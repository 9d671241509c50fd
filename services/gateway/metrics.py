"""The gateway's Prometheus metrics, served on 127.0.0.1:`gateway.metrics_port`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

BREAKER_STATE = Gauge(
    "ragmesh_breaker_state",
    "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open",
    ["endpoint"],
)
BREAKER_TRANSITIONS = Counter(
    "ragmesh_breaker_transitions_total", "Breaker state changes", ["endpoint", "state"]
)
DEGRADED = Counter(
    "ragmesh_degraded_responses_total", "Responses marked degraded, by cause", ["cause"]
)
CACHE = Counter(
    "ragmesh_cache_lookups_total", "Cache lookups by kind and result", ["kind", "result"]
)


def serve(port: int) -> None:
    """Starts the metrics endpoint in a daemon thread; port 0 means none."""
    if port:
        start_http_server(port, addr="127.0.0.1")
