"""Traces: OpenTelemetry in every Python service, exported over OTLP/HTTP off the request path.

Every call runs in a trace: its trace id names it in replies and logs, and the calls it
makes carry it on (W3C `traceparent`). Spans are made for the sampled traces only: the
caller's decision when it sends a trace context (Envoy, at `telemetry.sample_ratio`), else
the server's own, at the same ratio. With no collector configured nothing is sampled:
there is nowhere to send it. Spans are batched in memory (bounded; spans beyond the bound
are dropped) and exported by a background thread with a short timeout, so a slow or
absent collector never delays or fails a request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from typing import Any

import requests
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext

from services.config.telemetry import TelemetryConfig

EXPORT_TIMEOUT_S = 2.0
MAX_QUEUED_SPANS = 4096
# A batch leaves every 2 s, or as soon as 512 spans wait: few exports at low rates (each
# costs the process CPU for the HTTP round trip), full batches at high ones.
EXPORT_EVERY_MS = 2000
EXPORT_BATCH = 512


def setup(service: str, region: str, config: TelemetryConfig) -> TracerProvider:
    """Installs the process's tracer provider; call once at start, shut it down at exit.

    Disabled, the provider is returned but not installed: spans stay OpenTelemetry's no-ops.
    """
    resource = Resource.create({"service.name": service, "ragmesh.region": region})
    # A root span is sampled: the decision was CallInterceptor's, before it was started.
    provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
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
    """W3C trace context naming `span` (default: the current one) as the parent, sampled or
    not, for a call to another ragmesh service."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span) if span else None)
    return carrier


def triton_traceparent(span: trace.Span | None = None) -> dict[str, str]:
    """The trace context for a call to Triton, only if the trace is sampled: Triton (run with
    trace rate 0) traces every request that carries a context, whatever its flags."""
    span = span or trace.get_current_span()
    return traceparent(span) if span.is_recording() else {}


_IDS = RandomIdGenerator()


def _traceparent(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "traceparent":
            return str(value)
    return ""


_SAMPLED_FLAGS = {f"{flags:02x}" for flags in range(256) if flags & 1}


def sampled(metadata: Any, ratio: float) -> bool:
    """Whether a call with this metadata is sampled: its caller's decision (the sampled bit
    of traceparent's flags), else a new one, at `ratio`."""
    header = _traceparent(metadata)
    if header:
        return header[-2:] in _SAMPLED_FLAGS
    return random.random() < ratio


def unsampled(metadata: Any) -> otel_context.Context:
    """The context of an unsampled call's trace (its gRPC metadata or HTTP headers, names
    in lower case): its caller's, or a new one."""
    header = _traceparent(metadata)
    if header:
        caller = propagate.extract({"traceparent": header})
        if trace.get_current_span(caller).get_span_context().is_valid:
            return caller
    root = SpanContext(_IDS.generate_trace_id(), _IDS.generate_span_id(), is_remote=False)
    return trace.set_span_in_context(NonRecordingSpan(root))


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
