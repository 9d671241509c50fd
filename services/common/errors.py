"""One exception hierarchy, one interceptor that maps it to gRPC status, one HTTP table.

Each class's docstring names its gRPC status. Anything else a handler raises becomes
INTERNAL with a generic message, and its traceback goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

LOGGER = logging.getLogger(__name__)


class RagmeshError(Exception):
    """INTERNAL: the base class; raise a subclass."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(RagmeshError):
    """INVALID_ARGUMENT: the request is malformed; `field` names the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(RagmeshError):
    """UNAUTHENTICATED: no API key, or one the gateway does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class NotFound(RagmeshError):
    """NOT_FOUND: the named document or resource does not exist for this tenant."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(RagmeshError):
    """FAILED_PRECONDITION: the server cannot take this request in its role or state."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(RagmeshError):
    """UNAVAILABLE: a dependency is down; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class BreakerOpen(Unavailable):
    """UNAVAILABLE: the endpoint's circuit breaker is open, so the call was not even made."""


class DeadlineExceeded(RagmeshError):
    """DEADLINE_EXCEEDED: the request's time budget ran out."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


# Statuses the caller brings on itself (a bad or unauthorised request, a resource it does not
# have, its own cancellation, its quota): never a server failure, in the console's error
# rates, the SLO rules (deploy/prometheus/slo-rules.yml, kept equal by a test) or a breaker.
CALLER_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)

# The grpc-gateway mapping, the one table used wherever an HTTP code is shown.
# Envoy's transcoder applies the same mapping at the edge.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def status_details(error: RagmeshError) -> bytes:
    """A serialized google.rpc.Status; a BadRequest field violation when a field is named."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if error.field:
        detail = any_pb2.Any()
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.message
        )
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status.details.append(detail)
    return bytes(status.SerializeToString())


async def abort(context: grpc.aio.ServicerContext, error: RagmeshError) -> None:
    await context.abort(
        error.code,
        error.message,
        trailing_metadata=(("grpc-status-details-bin", status_details(error)),),
    )


async def _handle(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, RagmeshError):
        await abort(context, exc)
    LOGGER.exception("unhandled error in handler")
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


_Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def _wrap_unary(behavior: _Unary) -> _Unary:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _handle(context, exc)

    return wrapper


def _wrap_streaming(behavior: _Streaming) -> _Streaming:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _handle(context, exc)

    return wrapper


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps RagmeshError to its status (with rich details) and anything else to INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_stream_rpc_method_handler(
            _wrap_streaming(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
