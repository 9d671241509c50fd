"""The console's config (the topology page) and the SLO budgets it and `ragmesh slo` check."""

from __future__ import annotations

from dataclasses import dataclass

from services.config.loading import is_host, require


@dataclass(frozen=True, kw_only=True)
class ConsoleConfig:
    # Where the topology page's own HTTP server listens and where the edge reaches it, as
    # gateway.host is the gateway's: 0.0.0.0 in a pod of its own, the Service's name in the
    # config the edge renders from (deploy/k8s). Users reach the page through Envoy at
    # http://<edge>:<edge.listen_port>/topology.
    host: str = "127.0.0.1"
    port: int = 8082
    # Every refresh_s the console scrapes every layer's metrics, and the page redraws.
    refresh_s: float = 2.0
    # Rates and percentiles on the page cover the last window_s seconds.
    window_s: float = 30.0

    def __post_init__(self) -> None:
        require(is_host(self.host), "console.host", "must be an IP address or a host name")
        require(0 <= self.port < 65536, "console.port", "must be 0..65535")
        require(0.2 <= self.refresh_s <= 60, "console.refresh_s", "must be 0.2..60")
        require(self.window_s >= 2 * self.refresh_s, "console.window_s", ">= 2 * refresh_s")


STAGES = ("total", "edge", "gateway", "retrieval", "time_to_first_token", "time_per_output_chunk")


@dataclass(frozen=True, kw_only=True)
class SloConfig:
    """p99 latency budget per stage, in milliseconds; p95 is shown beside it.

    total: what a client waits for (at the edge in live metrics, at the client in a load
    run); edge: what Envoy adds; gateway: the gateway's whole call; retrieval: one search;
    time_to_first_token: from a request's arrival at the gateway to its first answer text;
    time_per_output_chunk: from one piece of a streamed answer's text to the next, at the
    gateway (OpenTelemetry's gen_ai.client.operation.time_per_output_chunk). A tier's stall
    budget (gateway.tiers.*.inter_token_timeout_s) belongs at or above it
    (MeshConfig.budgets_below_slo).
    """

    total_ms: float = 30_000.0
    edge_ms: float = 5.0
    gateway_ms: float = 30_000.0
    retrieval_ms: float = 250.0
    time_to_first_token_ms: float = 2_500.0
    time_per_output_chunk_ms: float = 1_000.0
    # The share of a load run's requests that may fail (any status but OK): `ragmesh gate`.
    error_rate: float = 0.01

    def __post_init__(self) -> None:
        for stage in STAGES:
            require(getattr(self, f"{stage}_ms") > 0, f"slo.{stage}_ms", "must be positive")
        require(0.0 <= self.error_rate <= 1.0, "slo.error_rate", "must be 0..1")

    def budget_ms(self, stage: str) -> float:
        return float(getattr(self, f"{stage}_ms"))
