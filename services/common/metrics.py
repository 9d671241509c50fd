"""Prometheus metrics every service shares: per-layer request latency and outcome.

Each service serves its metrics on 127.0.0.1 (`metrics_port` of its section); the
interceptor times every call of the ragmesh APIs and labels it with the gRPC status the
caller gets. Buckets are dense from 5 ms to 30 s, so p95 and p99 are readable at every
layer, from a cache hit to a CPU LLM's answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Histogram, start_http_server

from services.common.errors import RagmeshError

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_SECONDS = Histogram(
    "ragmesh_request_duration_seconds",
    "Server-side duration of each call, by layer, method and gRPC status",
    ["layer", "method", "code"],
    buckets=BUCKETS,
)


def serve(port: int) -> None:
    """Starts the metrics endpoint in a daemon thread; port 0 means none."""
    if port:
        start_http_server(port, addr="127.0.0.1")


def _code(exc: BaseException) -> str:
    """The status the caller gets: a RagmeshError's, CANCELLED when the caller went away."""
    if isinstance(exc, RagmeshError):
        return str(exc.code.name)
    return "INTERNAL" if isinstance(exc, Exception) else "CANCELLED"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every ragmesh call; placed innermost, it sees the handler's own exceptions."""

    def __init__(self, layer: str) -> None:
        self._layer = layer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if (
            handler is None
            or handler.request_streaming
            or not details.method.startswith("/ragmesh.")
        ):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        timer = REQUEST_SECONDS.labels
        layer = self._layer
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def timed_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, code = time.perf_counter(), "OK"
                try:
                    return await unary(request, context)
                except BaseException as exc:
                    code = _code(exc)
                    raise
                finally:
                    timer(layer, method, code).observe(time.perf_counter() - started)

            return grpc.unary_unary_rpc_method_handler(
                timed_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        streaming = handler.unary_stream

        async def timed_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            started, code = time.perf_counter(), "OK"
            try:
                async for item in streaming(request, context):
                    yield item
            except BaseException as exc:
                code = _code(exc)
                raise
            finally:
                timer(layer, method, code).observe(time.perf_counter() - started)

        return grpc.unary_stream_rpc_method_handler(
            timed_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
