"""The one server interceptor: every call's errors, trace and metrics (`serving.new_server`).

- Errors: a RagmeshError becomes its status, with google.rpc details (`errors.abort`);
  anything else becomes INTERNAL with a generic message, and its traceback is logged.
- Traces: every ragmesh call runs in its trace. A call that brings a trace context
  (`traceparent`) keeps its caller's decision; one that does not starts a trace, sampled
  at `ratio`. A span, made by opentelemetry-instrumentation-grpc, for the calls of sampled
  traces only: an unsampled call runs in its trace's context all the same (its trace id
  names it; the calls it makes carry the trace on with the sampled flag off) but makes no
  span, since the instrumentation and the SDK cost about 0.1 ms of CPU a call on a 2-core
  VM even for a span they drop.
- Metrics: every ragmesh call timed in `layer`'s REQUEST_SECONDS, labelled with the status
  the caller gets.

One interceptor, whose wrapped handlers are made once per method, because every
interceptor and every handler made per call costs CPU too. Health checks and reflection
get their errors mapped, and are neither timed nor traced. With telemetry off, errors are
mapped and nothing else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import Token
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.trace import TracerProvider

from services.common import errors, metrics, telemetry

LOGGER = logging.getLogger(__name__)

_RAGMESH_CALLS = "/ragmesh."
_Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Maps every call's errors to status; with `telemetry_on`, times ragmesh calls in
    `layer`'s metrics and runs them in their traces, sampled at `ratio` where the caller
    has not decided.

    Place it alone (or outermost): the status it records is the one the caller gets."""

    def __init__(
        self,
        layer: str,
        ratio: float,
        *,
        telemetry_on: bool = True,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._layer = layer
        self._ratio = ratio
        self._traced = (
            aio_server_interceptor(tracer_provider=tracer_provider)  # type: ignore[no-untyped-call]
            if telemetry_on
            else None
        )
        # method: (the handler of an unsampled call, run in its trace's context when the
        # method is traced; the handler a span wraps, None for a method never traced). A
        # method's handler does not change once the server runs.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler | None]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        plain, spanned = self._handlers.get(details.method) or self._wrap(details.method, handler)
        if spanned is None or not telemetry.sampled(details.invocation_metadata, self._ratio):
            return plain

        async def spanned_handler(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return spanned

        assert self._traced is not None
        return await self._traced.intercept_service(spanned_handler, details)

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler
    ) -> tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler | None]:
        wrapped: tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler | None]
        if self._traced is None or not method.startswith(_RAGMESH_CALLS):
            wrapped = (_serve(handler, None, in_trace=False), None)
        else:
            timer = metrics.timer(self._layer, method.rsplit("/", 1)[-1])
            wrapped = (
                _serve(handler, timer, in_trace=True),
                _serve(handler, timer, in_trace=False),
            )
        self._handlers[method] = wrapped
        return wrapped


def _serve(
    handler: grpc.RpcMethodHandler, timer: metrics.Timer | None, *, in_trace: bool
) -> grpc.RpcMethodHandler:
    """`handler` with its errors mapped, timed by `timer` (if any), run in its unsampled
    trace's context if `in_trace` (else in the context it is given: a span's, or none)."""
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=_unary(handler.unary_unary, timer, in_trace))
    return handler._replace(unary_stream=_streaming(handler.unary_stream, timer, in_trace))


def _unary(behavior: _Unary, timer: metrics.Timer | None, in_trace: bool) -> _Unary:
    async def serve(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = _in_trace(context) if in_trace else None
        started, code = time.perf_counter(), "OK"
        try:
            return await behavior(request, context)
        except BaseException as exc:
            code = _outcome(context, exc)
            await _end(context, exc)
        finally:
            _finish(timer, code, started, token)

    return serve


def _streaming(behavior: _Streaming, timer: metrics.Timer | None, in_trace: bool) -> _Streaming:
    async def serve(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        token = _in_trace(context) if in_trace else None
        started, code = time.perf_counter(), "OK"
        try:
            async for item in behavior(request, context):
                yield item
        except BaseException as exc:
            code = _outcome(context, exc)
            await _end(context, exc)
        finally:
            _finish(timer, code, started, token)

    return serve


def _in_trace(context: grpc.aio.ServicerContext) -> Token[otel_context.Context]:
    return otel_context.attach(telemetry.unsampled(context.invocation_metadata()))


def _outcome(context: grpc.aio.ServicerContext, exc: BaseException) -> str:
    """The status the caller gets for a call that raised `exc`: the one the handler aborted
    with, a RagmeshError's own, INTERNAL for any other error, CANCELLED when the caller
    went away (the task is cancelled)."""
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    if isinstance(exc, errors.RagmeshError):
        return exc.code.name
    return "INTERNAL" if isinstance(exc, Exception) else "CANCELLED"


async def _end(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Ends the call with `exc` (raises): a RagmeshError with its status and details; any
    other error with INTERNAL, a generic message and the traceback logged. An abort or a
    cancellation is raised again at once, nothing awaited: safe in a generator closing."""
    if isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
        raise exc
    if isinstance(exc, errors.RagmeshError):
        await errors.abort(context, exc)
    LOGGER.error("unhandled error in handler", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _finish(
    timer: metrics.Timer | None,
    code: str,
    started: float,
    token: Token[otel_context.Context] | None,
) -> None:
    if timer is not None:
        timer(code, time.perf_counter() - started)
    if token is not None:
        otel_context.detach(token)
