import grpc
import pytest

from services.common.errors import (
    HTTP_STATUS,
    MAX_MESSAGE_CHARS,
    MAX_VIOLATION_BYTES,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
    field_violations,
    from_status,
    http_status,
    rpc_status,
    status_details,
)
from services.common.validation import check_document_id
from services.gateway.control import credential


def test_key_from_either_header():
    assert credential([("x-api-key", "k1")], "x-api-key") == "k1"
    assert credential([("authorization", "Bearer k1")], "x-api-key") == "k1"
    assert credential([("authorization", b"bearer k1")], "x-api-key") == "k1"
    # The admin credential has one header, and a tenant key never stands in for it.
    assert credential([("x-admin-key", "a1"), ("x-api-key", "k1")], "x-admin-key") == "a1"
    # The same key in both headers (a client that sets both) is one credential.
    assert credential([("x-api-key", "k1"), ("authorization", "Bearer k1")], "x-api-key") == "k1"
    with pytest.raises(Unauthenticated):
        credential([("authorization", "Bearer a1")], "x-admin-key")


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("x-api-key", "")],
        [("authorization", "Basic k1")],
        # Two keys, even both known: which one counts would be the headers' order.
        [("x-api-key", "k1"), ("x-api-key", "k2")],
        [("x-api-key", "k1"), ("authorization", "Bearer k2")],
    ],
)
def test_missing_or_ambiguous_key_is_unauthenticated(metadata):
    with pytest.raises(Unauthenticated):
        credential(metadata, "x-api-key")


def test_http_table_is_the_grpc_gateway_mapping():
    assert http_status(grpc.StatusCode.INVALID_ARGUMENT) == 400
    assert http_status(grpc.StatusCode.UNAUTHENTICATED) == 401
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429
    assert http_status(grpc.StatusCode.CANCELLED) == 499
    assert http_status(grpc.StatusCode.UNAVAILABLE) == 503
    assert http_status(grpc.StatusCode.DEADLINE_EXCEEDED) == 504
    assert http_status(grpc.StatusCode.DATA_LOSS) == 500
    assert HTTP_STATUS[grpc.StatusCode.OK] == 200


def test_status_details_name_the_field():
    from google.rpc import error_details_pb2, status_pb2

    status = status_pb2.Status.FromString(
        status_details(InvalidArgument("top_k: bad", field="top_k"))
    )
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    assert detail.field_violations[0].field == "top_k"
    # The one builder: a stream's error event carries the same status as the trailer.
    assert rpc_status(InvalidArgument("top_k: bad", field="top_k")) == status
    assert not rpc_status(Unavailable("down")).details


def test_one_error_carries_a_violation_per_document_and_a_plane_passes_them_on():
    violations = [
        ("documents[0].content", "document 'a': is an encrypted PDF that needs a password"),
        ("documents[2].media_type", "document 'c': 'image/gif' is not one of ..."),
    ]
    error = InvalidArgument.of(violations)
    assert error.field == "documents[0].content"
    assert error.message == "; ".join(f"{f}: {d}" for f, d in violations)
    trailers = [("grpc-status-details-bin", status_details(error))]
    assert field_violations(trailers) == violations
    passed = from_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        error.message,
        "retrieval",
        passed=PASSED,
        trailers=trailers,
    )
    assert isinstance(passed, InvalidArgument) and passed.violations == violations
    assert rpc_status(passed) == rpc_status(error)


def test_many_violations_fit_the_trailers_gRPC_takes_and_say_how_many_are_left_out():
    violations = [(f"documents[{i}].content", "x" * 200) for i in range(100)]
    error = InvalidArgument.of(violations)
    assert 0 < len(error.violations) < 100
    assert sum(len(f) + len(d) for f, d in error.violations) <= MAX_VIOLATION_BYTES
    assert error.message.endswith(f"; and {100 - len(error.violations)} more not listed")
    assert len(error.message) < MAX_MESSAGE_CHARS + 50
    assert len(status_details(error)) * 4 / 3 + len(error.message) < 8 * 1024


PASSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@pytest.mark.parametrize(
    ("code", "details", "passed", "kind", "message", "field"),
    [
        # A plane's verdict on the request keeps its status, message and field.
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k: must be 1..50",
            PASSED,
            InvalidArgument,
            "top_k: must be 1..50",
            "top_k",
        ),
        (
            grpc.StatusCode.NOT_FOUND,
            "id: no such document",
            PASSED,
            NotFound,
            "id: no such document",
            "id",
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "embedding timed out",
            {grpc.StatusCode.DEADLINE_EXCEEDED},
            DeadlineExceeded,
            "embedding timed out",
            "",
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "",
            {grpc.StatusCode.DEADLINE_EXCEEDED},
            DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            "",
        ),
        # Not passed: the deadline is the call's; anything else is the server's failure.
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            (),
            DeadlineExceeded,
            "plane timed out",
            "",
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "text: bad",
            (),
            Unavailable,
            "plane unavailable: INVALID_ARGUMENT",
            "",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect",
            PASSED,
            Unavailable,
            "plane unavailable: UNAVAILABLE",
            "",
        ),
        (
            grpc.StatusCode.INTERNAL,
            "Stub process is not healthy",
            (),
            Unavailable,
            "plane unavailable: INTERNAL",
            "",
        ),
    ],
)
def test_a_status_is_read_back_as_one_error(code, details, passed, kind, message, field):
    error = from_status(code, details, "plane", passed=passed)
    assert (type(error), error.message, error.field) == (kind, message, field)
    assert error.code == kind.code


def test_a_timeout_may_name_the_work():
    error = from_status(
        grpc.StatusCode.DEADLINE_EXCEEDED, "", "llm", timeout="generation timed out"
    )
    assert (type(error), error.message) == (DeadlineExceeded, "generation timed out")


@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "x" * 129, "é"])
def test_document_ids_a_path_can_name(value):
    with pytest.raises(InvalidArgument, match=r"^documents\[0\]\.id: "):
        check_document_id(value, "documents[0].id")
    assert check_document_id("...", "id") == "..." and check_document_id("a.b:c-d_e", "id")
