"""One exception hierarchy, its gRPC status both ways, one HTTP table.

Each class's docstring names its gRPC status. Servers end a call with it (`abort`, which
`interceptor.CallInterceptor` calls for whatever a handler raises); clients read a failed
call's status back as one of these classes (`from_status`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from services.common.redaction import redact

ERROR_DOMAIN = "ragmesh.dev"
# A status goes back in trailers, and gRPC clients refuse trailers past 8 KiB
# (grpc.max_metadata_size): InvalidArgument.of keeps its message and its field violations
# (base64 in grpc-status-details-bin) within these.
MAX_MESSAGE_CHARS = 1000
MAX_VIOLATION_BYTES = 3000


class RagmeshError(Exception):
    """INTERNAL: the base class; raise a subclass."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str = "", reason: str = "") -> None:
        # Redacted once, here: a message may quote a refused value (a client who sends a
        # card number as a document id reads "[REDACTED:card]" back), and it reaches the
        # client, the logs, our spans and the edge's (Envoy records grpc-message).
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.field = redact(field)  # a field's name may hold a key the client chose
        # A google.rpc.ErrorInfo reason (UPPER_SNAKE_CASE, domain ERROR_DOMAIN) where the
        # status alone does not say why: PROMPT_INJECTION, OUTPUT_SCHEMA_VIOLATION.
        self.reason = reason


class InvalidArgument(RagmeshError):
    """INVALID_ARGUMENT: the request is malformed; `field` names the offending field.

    `violations`, (field, description) pairs, name each of several (one per document of an
    ingest that cannot be read); `field` is then the first's."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        reason: str = "",
        violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        first = violations[0][0] if violations else ""
        super().__init__(message, field=field or first, reason=reason)
        self.violations = [(redact(f), redact(d)) for f, d in violations]

    @classmethod
    def of(cls, violations: Sequence[tuple[str, str]]) -> InvalidArgument:
        """One error for several (field, description) pairs: those that fit in
        MAX_VIOLATION_BYTES, the message joining them ("field: description; ...") within
        MAX_MESSAGE_CHARS and saying how many more there are."""
        kept: list[tuple[str, str]] = []
        size = 0
        for field, description in violations:
            size += len(field.encode()) + len(description.encode())
            if kept and size > MAX_VIOLATION_BYTES:
                break
            kept.append((field, description))
        message = "; ".join(f"{f}: {d}" for f, d in kept)
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "…"
        if len(kept) < len(violations):
            message += f"; and {len(violations) - len(kept)} more not listed"
        return cls(message, violations=kept)


class Unauthenticated(RagmeshError):
    """UNAUTHENTICATED: no API key, or one the gateway does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class NotFound(RagmeshError):
    """NOT_FOUND: the named document or resource does not exist for this tenant."""

    code = grpc.StatusCode.NOT_FOUND


class PermissionDenied(RagmeshError):
    """PERMISSION_DENIED: the caller is known but may not do this (a tier its policy does not
    allow, an admin call without the admin credential)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class QuotaExceeded(RagmeshError):
    """RESOURCE_EXHAUSTED: a rate limit or budget refuses the request. Its status carries a
    google.rpc.QuotaFailure (`subject`, `description`) and a google.rpc.RetryInfo; the call's
    `retry-after` metadata (whole seconds, at least 1) becomes Envoy's HTTP header."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self, message: str, *, subject: str = "", description: str = "", retry_after_s: float = 1.0
    ) -> None:
        super().__init__(message)
        self.subject = subject
        self.description = description
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> str:
        return str(max(math.ceil(self.retry_after_s), 1))


class AlreadyExists(RagmeshError):
    """ALREADY_EXISTS: the resource the request would create exists (a tenant's name)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(RagmeshError):
    """ABORTED: the answer was made but withheld, as an output guardrail says (an answer that
    fails the request's JSON schema); a retry may succeed. The server's failure, not the
    caller's."""

    code = grpc.StatusCode.ABORTED


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


def rpc_status(error: RagmeshError) -> status_pb2.Status:
    """The error as a google.rpc.Status; a BadRequest with its field violations (or the one
    field it names)."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    violations = error.violations if isinstance(error, InvalidArgument) else []
    if not violations and error.field:
        violations = [(error.field, error.message)]
    if violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations
                ]
            )
        )
        status.details.append(detail)
    if error.reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
        status.details.append(detail)
    if isinstance(error, QuotaExceeded):
        failure = error_details_pb2.QuotaFailure.Violation(
            subject=error.subject, description=error.description
        )
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        retry = error_details_pb2.RetryInfo(retry_delay=delay)
        for message in (error_details_pb2.QuotaFailure(violations=[failure]), retry):
            detail = any_pb2.Any()
            detail.Pack(message)
            status.details.append(detail)
    return status


def status_details(error: RagmeshError) -> bytes:
    """`rpc_status(error)` serialized, as the `grpc-status-details-bin` trailer carries it."""
    return bytes(rpc_status(error).SerializeToString())


async def abort(context: grpc.aio.ServicerContext, error: RagmeshError) -> None:
    """Ends the call with `error`'s status, message and details (raises AbortError)."""
    trailers: tuple[tuple[str, str | bytes], ...] = (
        ("grpc-status-details-bin", status_details(error)),
    )
    if isinstance(error, QuotaExceeded):
        trailers += (("retry-after", error.retry_after),)
    await context.abort(error.code, error.message, trailing_metadata=trailers)


_BY_CODE: dict[grpc.StatusCode, type[RagmeshError]] = {
    kind.code: kind
    for kind in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        QuotaExceeded,
        Unavailable,
        DeadlineExceeded,
    )
}
_FIELD_FIRST = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})


def field_violations(trailers: Iterable[tuple[str, str | bytes]] | None) -> list[tuple[str, str]]:
    """The (field, description) pairs of the google.rpc.BadRequest in a failed call's
    `grpc-status-details-bin` trailer; [] without one."""
    found: list[tuple[str, str]] = []
    for key, value in trailers or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                found += [(v.field, v.description) for v in bad.field_violations]
    return found


def from_status(
    code: grpc.StatusCode,
    details: str,
    server: str,
    *,
    timeout: str = "",
    passed: Collection[grpc.StatusCode] = (),
    trailers: Iterable[tuple[str, str | bytes]] | None = None,
) -> RagmeshError:
    """The error for a call to `server` that failed with status `code` and `details`.

    A code in `passed` (a ragmesh plane's verdict on the request itself) keeps its class and
    message, and the field its message starts with where it names one (the planes' messages
    do); INVALID_ARGUMENT keeps every field violation of its `trailers` too. Else
    DEADLINE_EXCEEDED is DeadlineExceeded(`timeout`, default "<server> timed out"), and
    anything else the server's failure: Unavailable("<server> unavailable: CODE").
    """
    kind = _BY_CODE.get(code) if code in passed else None
    if kind is InvalidArgument and (violations := field_violations(trailers)):
        return InvalidArgument(details or code.name, violations=violations)
    if kind is not None:
        message = details or code.name
        field = message.split(":", 1)[0] if code in _FIELD_FIRST else ""
        return kind(message, field=field)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(timeout or f"{server} timed out")
    return Unavailable(f"{server} unavailable: {code.name}")
