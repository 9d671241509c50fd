"""The whole request path through Envoy: HTTP/JSON and gRPC, unary and streaming."""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from ragmesh.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.integration


def test_http_generate_cites_ingested_documents(http, demo_key, corpus):
    body = json.dumps(
        {"query": "What temperature should water be for green tea?", "tier": "economy"}
    ).encode()
    status, reply = http("POST", "/v1/generate", demo_key, body)
    assert status == 200, reply
    assert "80 degrees" in reply["answer"]
    assert reply["citations"], reply
    assert {c["document_id"] for c in reply["citations"]} == {"tea"}
    assert reply["usage"]["prompt_tokens"] > 0
    assert reply["usage"]["completion_tokens"] > 0
    assert reply["model"] == "economy/1" and reply["tier"] == "economy"
    assert reply["region"] == "local"
    assert len(reply["trace_id"]) == 32
    # The tenant's version now (other tests of this session write to this tenant too).
    assert reply["corpus_version"] == http("GET", "/v1/status", demo_key)[1]["corpus_version"]


def test_grpc_generate_unary_and_stream_agree(stub, demo_key, corpus):
    request = pb.GenerateRequest(query="Which volcano in Sicily is very active?", tier="economy")
    metadata = (("x-api-key", demo_key),)
    unary = stub.Generate(request, metadata=metadata, timeout=60)
    # Past the answer cache, which would send the unary call's answer as one token.
    uncached = pb.GenerateRequest(query=request.query, tier="economy", bypass_cache=True)
    events = list(stub.GenerateStream(uncached, metadata=metadata, timeout=60))
    tokens = [e.token for e in events if e.WhichOneof("event") == "token"]
    assert len(tokens) > 1, "the stream must send tokens as they come"
    assert events[-1].WhichOneof("event") == "final"
    final = events[-1].final
    assert "".join(tokens) == unary.answer
    assert "Etna" in unary.answer
    assert [c.document_id for c in final.citations] == ["volcano"]
    assert final.usage.completion_tokens == unary.usage.completion_tokens > 0


def test_http_stream_is_newline_delimited_json(mesh, demo_key, corpus):
    request = urllib.request.Request(
        mesh.http_url + "/v1/generate:stream",
        data=json.dumps(
            {"query": "How often should a bicycle chain be lubricated?", "tier": "economy"}
        ).encode(),
        headers={"x-api-key": demo_key, "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        lines = [json.loads(line) for line in response.read().decode().splitlines() if line]
    assert len(lines) > 2
    assert all("token" in line for line in lines[:-1])
    final = lines[-1]["final"]
    assert [c["document_id"] for c in final["citations"]] == ["bikes"]


def test_bearer_token_is_accepted(stub, demo_key, corpus):
    reply = stub.Search(
        pb.SearchRequest(query="green tea"),
        metadata=(("authorization", f"Bearer {demo_key}"),),
        timeout=30,
    )
    assert reply.hits[0].document_id == "tea"


def test_search_filters_by_metadata(stub, demo_key, corpus):
    reply = stub.Search(
        pb.SearchRequest(query="green tea", top_k=5, filters={"topic": "geology"}),
        metadata=(("x-api-key", demo_key),),
        timeout=30,
    )
    assert {h.document_id for h in reply.hits} == {"volcano"}


def test_tenants_never_see_each_other(stub, demo_key, other_key, corpus):
    other = (("x-api-key", other_key),)
    assert not stub.Search(pb.SearchRequest(query="green tea"), metadata=other, timeout=30).hits
    reply = stub.Generate(
        pb.GenerateRequest(query="How hot for green tea?", tier="economy"), metadata=other
    )
    assert not reply.citations
    with pytest.raises(grpc.RpcError) as err:
        stub.DeleteDocument(pb.DeleteDocumentRequest(id="tea"), metadata=other, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    mine = stub.Search(pb.SearchRequest(query="green tea"), metadata=(("x-api-key", demo_key),))
    assert mine.hits[0].document_id == "tea"


def test_reingest_is_idempotent_and_delete_removes(stub, demo_key, corpus):
    metadata = (("x-api-key", demo_key),)
    document = pb.Document(
        id="kiwi", title="Kiwi", text="The kiwi is a flightless bird of New Zealand."
    )
    first = stub.IngestDocuments(pb.IngestDocumentsRequest(documents=[document]), metadata=metadata)
    second = stub.IngestDocuments(
        pb.IngestDocumentsRequest(documents=[document]), metadata=metadata
    )
    assert int(second.corpus_version) == int(first.corpus_version) + 1
    hits = stub.Search(pb.SearchRequest(query="flightless bird", top_k=10), metadata=metadata).hits
    assert [h.chunk_id for h in hits if h.document_id == "kiwi"] == ["kiwi#0"]

    deleted = stub.DeleteDocument(pb.DeleteDocumentRequest(id="kiwi"), metadata=metadata)
    assert deleted.deleted and int(deleted.corpus_version) > int(second.corpus_version)
    hits = stub.Search(pb.SearchRequest(query="flightless bird", top_k=10), metadata=metadata).hits
    assert "kiwi" not in {h.document_id for h in hits}


def test_http_delete_and_status(http, demo_key, corpus):
    status, reply = http("DELETE", "/v1/documents/never-ingested", demo_key)
    assert status == 404, reply
    status, reply = http("GET", "/v1/status", demo_key)
    assert status == 200, reply
    assert reply["tenant"] == "demo"
    assert all(d["healthy"] for d in reply["dependencies"]), reply


@pytest.mark.parametrize("service", ["gateway", "retrieval"])
def test_health_and_reflection_registered(mesh, service):
    port = getattr(mesh.config, service).port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert f"ragmesh.{'v1.Gateway' if service == 'gateway' else 'retrieval.v1.Retrieval'}" in names
    assert "grpc.health.v1.Health" in names


def test_a_plain_search_gets_the_clients_deadline_a_generation_its_budget(
    mesh, stub, demo_key, corpus
):
    """Retrieval 3 s slow (Envoy's fault filter): a search with the client's 30 s still
    answers, while a generation's sources (its 2 s budget) degrade."""
    metadata = (("x-api-key", demo_key),)
    mesh.delay_retrieval("local", 3000)
    try:
        found = stub.Search(pb.SearchRequest(query="green tea"), metadata=metadata, timeout=30)
        assert found.hits and found.hits[0].document_id == "tea"
        reply = stub.Generate(
            pb.GenerateRequest(query="green tea", tier="economy", bypass_cache=True),
            metadata=metadata,
            timeout=30,
        )
        assert reply.degraded_reason == "retrieval late: answered without sources"
    finally:
        mesh.delay_retrieval("local", 0)
    assert stub.Search(pb.SearchRequest(query="green tea"), metadata=metadata, timeout=30).hits
