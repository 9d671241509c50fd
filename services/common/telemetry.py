"""Traces: OpenTelemetry in every Python service, exported over OTLP/HTTP off the request path.

Every call runs in a trace: its trace id names it in replies and logs, and the calls it
makes carry it on (W3C `traceparent`). Spans are made for the sampled traces only: the
caller's decision when it sends a trace context (Envoy, at `telemetry.sample_ratio`), else
the server's own, at the same ratio. With no collector configured nothing is sampled:
there is nowhere to send it. Spans are batched in memory (bounded; spans beyond the bound
are dropped) and exported by a background thread with a short timeout, so a slow or
absent collector never delays or fails a request.

Keys, tokens, emails, phone and card numbers leave the Python services in no span and no
log line: both sinks pass their text through `redaction.redact`, the one mechanism (spans
in the exporting thread, RedactingSpanExporter; log lines in JsonLogFormatter). Tenants and
prompts are named by `digest`, never in clear.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import requests
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Status
from opentelemetry.util.types import Attributes

from services.common.redaction import redact
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
                RedactingSpanExporter(exporter),
                max_queue_size=MAX_QUEUED_SPANS,
                schedule_delay_millis=EXPORT_EVERY_MS,
                max_export_batch_size=EXPORT_BATCH,
                export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000),
            )
        )
    if config.enabled:
        trace.set_tracer_provider(provider)
    return provider


class RedactingSpanExporter(SpanExporter):
    """Exports spans through `inner` with their text redacted: name, string attributes
    (and strings in list attributes), status description, events' names and attributes,
    links' attributes. A span is immutable: one with something to redact leaves as a copy
    (its drop counts kept); the others leave as they are."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([_redacted(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _redacted(span: ReadableSpan) -> ReadableSpan:
    name, original = redact(span.name), span.attributes  # a new read-only view each time
    attributes = _redacted_attributes(original, span.dropped_attributes)
    status = span.status
    description = status.description and redact(status.description)
    events = [_redacted_event(event) for event in span.events]
    links = [_redacted_link(link) for link in span.links]
    if (
        name == span.name
        and attributes is original
        and description == status.description
        and all(new is old for new, old in zip(events, span.events, strict=True))
        and all(new is old for new, old in zip(links, span.links, strict=True))
    ):
        return span
    return ReadableSpan(
        name=name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=_bounded(events, span.dropped_events),
        links=_bounded(links, span.dropped_links),
        kind=span.kind,
        status=Status(status.status_code, description),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _redacted_event(event: Event) -> Event:
    name = redact(event.name)
    attributes = _redacted_attributes(event.attributes, event.dropped_attributes)
    if name == event.name and attributes is event.attributes:
        return event
    return Event(name, attributes, event.timestamp)


def _redacted_link(link: Link) -> Link:
    attributes = _redacted_attributes(link.attributes, link.dropped_attributes)
    return link if attributes is link.attributes else Link(link.context, attributes)


def _redacted_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, tuple | list):
        return tuple(redact(v) if isinstance(v, str) else v for v in value)
    return value


def _redacted_attributes(attributes: Attributes, dropped: int) -> Attributes:
    """`attributes` with their strings redacted, and the count of those the SDK dropped;
    the same object when none changed."""
    if not attributes:
        return attributes
    clean = {key: _redacted_value(value) for key, value in attributes.items()}
    if clean == dict(attributes):
        return attributes
    copy = BoundedAttributes(attributes=clean, immutable=True)
    copy.dropped = dropped
    return copy


_T = TypeVar("_T")


def _bounded(items: list[_T], dropped: int) -> BoundedList[_T]:
    """`items` as the SDK keeps them, with the count of those it dropped."""
    bounded: BoundedList[_T] = BoundedList(None)
    bounded.extend(items)
    bounded.dropped = dropped
    return bounded


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
    the formatter adds only context, never request data; the message and the traceback
    pass through `redact` all the same, for what a message or an exception carries
    unawares (a refused value quoted in an error, a key in a URL).
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
            "message": redact(record.getMessage()),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def log_json(service: str, level: str) -> None:
    """Configures the root logger to write JsonLogFormatter lines to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter(service))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def digest(text: str) -> str:
    """A short stable hash: names a tenant or a prompt in telemetry without its text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
