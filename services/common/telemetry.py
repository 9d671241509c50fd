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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import requests
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext

from services.common import metrics
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
    # A root span is sampled: the decision was ServerTelemetry's, before it was started.
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


_RAGMESH_CALLS = "/ragmesh."
_IDS = RandomIdGenerator()
_Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


class ServerTelemetry(grpc.aio.ServerInterceptor):
    """Every ragmesh call timed in `layer`'s metrics and run in its trace; a span, made by
    opentelemetry-instrumentation-grpc, for the calls of sampled traces only.

    A call that brings a trace context (`traceparent`) keeps its caller's decision; one that
    does not starts a trace, sampled at `ratio`. An unsampled call runs in its trace's
    context all the same (its trace id names it; the calls it makes carry the trace on with
    the sampled flag off) but makes no span: the instrumentation and the SDK cost about
    0.1 ms of CPU a call on a 2-core VM even for a span they drop. One interceptor, and the
    wrapped handlers made once per method, because every interceptor and every handler
    made per call costs CPU too. Place it outermost: the status it records is the one the
    caller gets. Health checks and reflection are neither timed nor traced.
    """

    def __init__(
        self, layer: str, ratio: float, tracer_provider: TracerProvider | None = None
    ) -> None:
        self._layer = layer
        self._ratio = ratio
        self._traced = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=tracer_provider
        )
        # method: (timed handler, timed handler in the trace context of its metadata); a
        # method's handler does not change once the server runs
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        if not details.method.startswith(_RAGMESH_CALLS):
            return handler
        timed, in_context = self._handlers.get(details.method) or self._wrap(details, handler)
        if not _sampled(details.invocation_metadata, self._ratio):
            return in_context

        async def timed_handler(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return timed

        return await self._traced.intercept_service(timed_handler, details)

    def _wrap(
        self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler
    ) -> tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]:
        timer = metrics.REQUEST_SECONDS.labels
        layer, method = self._layer, details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            unary: _Unary = handler.unary_unary

            async def timed_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, code = time.perf_counter(), "OK"
                try:
                    return await unary(request, context)
                except BaseException as exc:
                    code = _code(context, exc)
                    raise
                finally:
                    timer(layer, method, code).observe(time.perf_counter() - started)

            async def unary_in_context(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = otel_context.attach(_unsampled(context))
                try:
                    return await timed_unary(request, context)
                finally:
                    otel_context.detach(token)

            wrapped = (
                handler._replace(unary_unary=timed_unary),
                handler._replace(unary_unary=unary_in_context),
            )
        else:
            streaming: _Streaming = handler.unary_stream

            async def timed_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                started, code = time.perf_counter(), "OK"
                try:
                    async for item in streaming(request, context):
                        yield item
                except BaseException as exc:
                    code = _code(context, exc)
                    raise
                finally:
                    timer(layer, method, code).observe(time.perf_counter() - started)

            async def stream_in_context(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                token = otel_context.attach(_unsampled(context))
                try:
                    async for item in timed_stream(request, context):
                        yield item
                finally:
                    otel_context.detach(token)

            wrapped = (
                handler._replace(unary_stream=timed_stream),
                handler._replace(unary_stream=stream_in_context),
            )
        self._handlers[details.method] = wrapped
        return wrapped


def _traceparent(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "traceparent":
            return str(value)
    return ""


_SAMPLED_FLAGS = {f"{flags:02x}" for flags in range(256) if flags & 1}


def _sampled(metadata: Any, ratio: float) -> bool:
    """The caller's decision (the sampled bit of traceparent's flags), else a new one."""
    header = _traceparent(metadata)
    if header:
        return header[-2:] in _SAMPLED_FLAGS
    return random.random() < ratio


def _unsampled(context: grpc.aio.ServicerContext) -> otel_context.Context:
    """The call's unsampled trace: the caller's, or a new one."""
    header = _traceparent(context.invocation_metadata())
    if header:
        caller = propagate.extract({"traceparent": header})
        if trace.get_current_span(caller).get_span_context().is_valid:
            return caller
    root = SpanContext(_IDS.generate_trace_id(), _IDS.generate_span_id(), is_remote=False)
    return trace.set_span_in_context(NonRecordingSpan(root))


def _code(context: grpc.aio.ServicerContext, exc: BaseException) -> str:
    """The status the caller gets: the one the call aborted with (errors.ErrorInterceptor maps
    every error to one), CANCELLED when the caller went away (the task is cancelled)."""
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return "INTERNAL" if isinstance(exc, Exception) else "CANCELLED"


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
