"""The telemetry section: where traces go and how many are sampled (docs/telemetry.md)."""

from __future__ import annotations

from dataclasses import dataclass

from services.config.loading import require


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    # False: no spans, no per-call metrics, no metrics endpoint. Only for measuring what
    # telemetry costs (loadtest/bench_telemetry.py); the mesh always runs with it.
    enabled: bool = True
    # OTLP/HTTP collector, e.g. http://127.0.0.1:6006 (Phoenix) or :4318 (a collector);
    # empty: spans are made but not exported. `make up TRACES=1` sets it to Phoenix.
    otlp_endpoint: str = ""
    # Share of traces sampled (spans made and exported) where a request enters the mesh;
    # the layers behind follow that decision. Every request is timed in the metrics and
    # has a trace id whatever it is. `make up TRACES=1` samples every trace.
    sample_ratio: float = 0.01
    # The local trace viewer (Arize Phoenix) of `make up TRACES=1`: its UI and OTLP/HTTP
    # port, and its OTLP/gRPC port.
    viewer_port: int = 6006
    viewer_grpc_port: int = 4317

    @property
    def sampled(self) -> float:
        """The share of traces sampled: none without a collector to send them to."""
        return self.sample_ratio if self.otlp_endpoint else 0.0

    def __post_init__(self) -> None:
        require(0.0 <= self.sample_ratio <= 1.0, "telemetry.sample_ratio", "must be 0..1")
        require(
            not self.otlp_endpoint or self.otlp_endpoint.startswith(("http://", "https://")),
            "telemetry.otlp_endpoint",
            "must be an http(s):// URL",
        )
