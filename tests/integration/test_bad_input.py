"""Bad input: the right status, a message naming the field, nothing written, still serving."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import empty_pb2
from google.rpc import error_details_pb2, status_pb2
from ragmesh.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.integration


def _version(stub, key) -> str:
    return stub.GetStatus(empty_pb2.Empty(), metadata=(("x-api-key", key),)).corpus_version


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "x" * 5000}, "query"),
        ({"query": "tea", "top_k": 1000}, "top_k"),
        ({"query": "tea", "top_k": -1}, "top_k"),
        ({"query": "tea", "max_tokens": 100000}, "max_tokens"),
        ({"query": "tea", "max_tokens": -5}, "max_tokens"),
        ({"query": "tea", "filters": {"bad key": "x"}}, "filters"),
    ],
)
def test_invalid_generate_is_400_naming_the_field(http, demo_key, corpus, body, field):
    status, reply = http("POST", "/v1/generate", demo_key, json.dumps(body).encode())
    assert status == 400, reply
    assert reply["message"].startswith(field), reply


def test_malformed_json_is_400(http, demo_key):
    status, _ = http("POST", "/v1/generate", demo_key, b'{"query": "tea"')
    assert status == 400


def test_unknown_field_is_400_naming_it(http, demo_key):
    status, reply = http("POST", "/v1/generate", demo_key, b'{"query": "tea", "qeury": "x"}')
    assert status == 400, reply
    assert "qeury" in reply["message"]


@pytest.mark.parametrize("key", [None, "rmk-wrong-key"])
def test_missing_or_wrong_key_is_401(http, key):
    status, reply = http("POST", "/v1/generate", key, b'{"query": "tea"}')
    assert status == 401, reply


def test_grpc_error_carries_field_violation(stub, demo_key):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(
            pb.GenerateRequest(query="tea", top_k=999), metadata=(("x-api-key", demo_key),)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = dict(err.value.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "top_k"


@pytest.mark.parametrize(
    ("documents", "field", "code"),
    [
        ([{"id": "big", "text": "word " * 250_000}], "documents[0].text", 400),
        ([{"id": "ok", "text": "fine"}, {"id": "bad id!", "text": "x"}], "documents[1].id", 400),
        ([{"id": "ok", "text": "fine"}, {"id": "empty", "text": "   "}], "documents[1].text", 400),
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "documents", 400),
        # Over the store's 1,024-byte title column: refused before the corpus log.
        (
            [{"id": "ok", "text": "fine"}, {"id": "a", "title": "T" * 1025, "text": "x."}],
            "documents[1].title",
            400,
        ),
        ([{"id": "a", "title": "字" * 342, "text": "x."}], "documents[0].title", 400),
        ([], "documents", 400),
    ],
)
def test_bad_ingest_writes_nothing(http, stub, demo_key, corpus, documents, field, code):
    before = _version(stub, demo_key)
    status, reply = http(
        "POST", "/v1/documents", demo_key, json.dumps({"documents": documents}).encode()
    )
    assert status == code, reply
    assert reply["message"].startswith(field), reply
    assert _version(stub, demo_key) == before
    hits = stub.Search(
        pb.SearchRequest(query="fine", top_k=50), metadata=(("x-api-key", demo_key),)
    ).hits
    assert not {h.document_id for h in hits} & {"ok", "big", "a", "empty"}


def test_writes_go_on_after_a_refused_one(http, demo_key, other_key, corpus):
    """A write the store would refuse takes nothing down: the next ones, of any tenant, land."""
    body = {"documents": [{"id": "t", "title": "T" * 1025, "text": "x."}]}
    status, _ = http("POST", "/v1/documents", demo_key, json.dumps(body).encode())
    assert status == 400
    for key in (other_key, demo_key):
        body = {"documents": [{"id": "after-refused", "title": "T" * 1024, "text": "Fine."}]}
        status, reply = http("POST", "/v1/documents", key, json.dumps(body).encode())
        assert status == 200, reply
        status, reply = http("DELETE", "/v1/documents/after-refused", key)
        assert status == 200, reply


def test_still_serving_after_bad_input(http, demo_key, corpus):
    body = b'{"query": "green tea temperature", "tier": "economy"}'
    status, reply = http("POST", "/v1/generate", demo_key, body)
    assert status == 200, reply
    assert reply["citations"]
