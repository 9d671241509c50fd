import grpc
import pytest

from services.common.errors import (
    HTTP_STATUS,
    InvalidArgument,
    Unauthenticated,
    http_status,
    status_details,
)
from services.common.validation import check_document_id
from services.gateway.auth import Authenticator, key_digest


def test_tenant_from_either_header():
    auth = Authenticator({"acme": key_digest("k1")})
    assert auth.tenant([("x-api-key", "k1")]) == "acme"
    assert auth.tenant([("authorization", "Bearer k1")]) == "acme"
    assert auth.tenant([("authorization", b"bearer k1")]) == "acme"


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("x-api-key", "nope")],
        [("authorization", "Basic k1")],
        # Two keys, even both known: which one counts would be the headers' order.
        [("x-api-key", "k1"), ("x-api-key", "k2")],
        [("x-api-key", "k1"), ("authorization", "Bearer k1")],
    ],
)
def test_missing_or_unknown_key_is_unauthenticated(metadata):
    with pytest.raises(Unauthenticated):
        Authenticator({"acme": key_digest("k1"), "other": key_digest("k2")}).tenant(metadata)


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


@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "x" * 129, "é"])
def test_document_ids_a_path_can_name(value):
    with pytest.raises(InvalidArgument, match=r"^documents\[0\]\.id: "):
        check_document_id(value, "documents[0].id")
    assert check_document_id("...", "id") == "..." and check_document_id("a.b:c-d_e", "id")
