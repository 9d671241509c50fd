"""Traces: OpenTelemetry in every Python service, exported over OTLP/HTTP off the request path.

Spans are batched in memory (bounded; spans beyond the bound are dropped) and exported
by a background thread with a short timeout, so a slow or absent collector never delays or
fails a request. With no endpoint configured, spans are still made (their trace ids name
every request) but go nowhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

import requests
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from services.common.config import require

EXPORT_TIMEOUT_S = 2.0
MAX_QUEUED_SPANS = 4096
# A batch leaves every 2 s, or as soon as 512 spans wait: few exports at low rates (each
# costs the process CPU for the HTTP round trip), full batches at high ones.
EXPORT_EVERY_MS = 2000
EXPORT_BATCH = 512


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    # False: no spans, no per-call metrics, no metrics endpoint. Only for measuring what
    # telemetry costs (loadtest/bench_telemetry.py); the mesh always runs with it.
    enabled: bool = True
    # OTLP/HTTP collector, e.g. http://127.0.0.1:6006 (Phoenix) or :4318 (a collector);
    # empty: spans are made but not exported. `make up TRACES=1` sets it to Phoenix.
    otlp_endpoint: str = ""
    # Share of new traces kept; a request that arrives with a sampled parent is kept.
    sample_ratio: float = 1.0
    # The local trace viewer (Arize Phoenix) of `make up TRACES=1`: its UI and OTLP/HTTP
    # port, and its OTLP/gRPC port.
    viewer_port: int = 6006
    viewer_grpc_port: int = 4317

    def __post_init__(self) -> None:
        require(0.0 <= self.sample_ratio <= 1.0, "telemetry.sample_ratio", "must be 0..1")
        require(
            not self.otlp_endpoint or self.otlp_endpoint.startswith(("http://", "https://")),
            "telemetry.otlp_endpoint",
            "must be an http(s):// URL",
        )


def setup(service: str, region: str, config: TelemetryConfig) -> TracerProvider:
    """Installs the process's tracer provider; call once at start, shut it down at exit.

    Disabled, the provider is returned but not installed: spans stay OpenTelemetry's no-ops.
    """
    resource = Resource.create({"service.name": service, "ragmesh.region": region})
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio))
    )
    if config.otlp_endpoint:
        session = requests.Session()
        session.trust_env = False  # no proxy lookup in the environment on every export
        exporter = OTLPSpanExporter(
            endpoint=f"{config.otlp_endpoint.rstrip('/')}/v1/traces",
            timeout=EXPORT_TIMEOUT_S,
            session=session,
        )
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=MAX_QUEUED_SPANS,
                schedule_delay_millis=EXPORT_EVERY_MS,
                max_export_batch_size=EXPORT_BATCH,
                export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000),
            )
        )
    if config.enabled:
        trace.set_tracer_provider(provider)
    return provider


def traceparent(span: trace.Span | None = None) -> dict[str, str]:
    """W3C trace context naming `span` (default: the current one) as the parent, for a call
    the gRPC instrumentation does not see (tritonclient's)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span) if span else None)
    return carrier


def trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line, with the trace and span of the request being served.

    Messages follow the house rule (sizes and hashes, never a prompt, document or key), so
    the formatter adds only context, never request data.
    """

    converter = time.gmtime  # type: ignore[assignment]  # UTC timestamps

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_json(service: str, level: str) -> None:
    """Configures the root logger to write JsonLogFormatter lines to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter(service))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def digest(text: str) -> str:
    """A short stable hash: names a tenant or a prompt in telemetry without its text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
