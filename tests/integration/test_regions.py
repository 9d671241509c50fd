"""Two regions: each serves queries from its own replica; writes go to one governance point;
a region that was down while documents were ingested catches up when it returns."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import empty_pb2
from ragmesh.retrieval.v1 import retrieval_pb2 as rpb
from ragmesh.retrieval.v1 import retrieval_pb2_grpc
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

pytestmark = pytest.mark.integration


def _metadata(mesh):
    return (("x-api-key", mesh.config.mesh.demo_key),)


def _gateway(target: str):
    return gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(target))


def _ingest(mesh, doc_id: str, text: str) -> pb.IngestDocumentsResponse:
    stub = _gateway(mesh.edge_target)
    document = pb.Document(id=doc_id, title=doc_id, text=text, metadata={"case": doc_id})
    request = pb.IngestDocumentsRequest(documents=[document])
    return stub.IngestDocuments(request, metadata=_metadata(mesh), timeout=60)


def _status(mesh, region) -> pb.StatusResponse:
    return _gateway(region.gateway_target).GetStatus(
        empty_pb2.Empty(), metadata=_metadata(mesh), timeout=10
    )


def _until_replicated(mesh, version: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states = [_status(mesh, r) for r in mesh.regions]
        if all(
            s.corpus_version == version and s.corpus_lag == 0 and s.corpus_region == r.name
            for s, r in zip(states, mesh.regions, strict=True)
        ):
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.5)


def _replica_finds(region, tenant: str, doc_id: str, text: str) -> bool:
    """Asks the region's retrieval itself, not through Envoy (which may fail over)."""
    stub = retrieval_pb2_grpc.RetrievalStub(grpc.insecure_channel(region.retrieval_target))
    request = rpb.SearchRequest(tenant=tenant, query=text, top_k=1, filters={"case": doc_id})
    reply = stub.Search(request, timeout=10)
    return [c.document_id for c in reply.chunks] == [doc_id]


def test_every_region_serves_an_ingest_from_its_own_replica(regions):
    text = "The lighthouse keeper lights the lamp at dusk and logs every passing ship."
    reply = _ingest(regions, "lighthouse", text)
    _until_replicated(regions, reply.corpus_version)
    for region in regions.regions:
        status = _status(regions, region)
        assert (status.region, status.corpus_region) == (region.name, region.name)
        assert _replica_finds(region, "demo", "lighthouse", text)
        hits = _gateway(region.gateway_target).Search(
            pb.SearchRequest(query="Who lights the lamp?", filters={"case": "lighthouse"}),
            metadata=_metadata(regions),
            timeout=10,
        )
        assert [h.document_id for h in hits.hits][:1] == ["lighthouse"]


def test_a_replica_refuses_writes(regions):
    replica = regions.regions[1]
    stub = retrieval_pb2_grpc.RetrievalStub(grpc.insecure_channel(replica.retrieval_target))
    document = rpb.Document(id="sneaky", text="written to a replica")
    with pytest.raises(grpc.RpcError) as err:
        stub.Upsert(rpb.UpsertRequest(tenant="demo", documents=[document]), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "replica" in err.value.details()
    assert not _replica_finds(replica, "demo", "sneaky", "written to a replica")


def test_a_region_down_during_ingest_catches_up_when_it_returns(regions):
    replica = regions.regions[1]
    process = f"retrieval-{replica.name}"
    regions.kill(process)
    try:
        text = "The glacier moved forty metres last winter, the survey team reported."
        reply = _ingest(regions, "glacier", text)  # acknowledged by the governance point
        # Meanwhile the other region's gateway still answers, from the governance replica.
        status = _status(regions, replica)
        assert status.corpus_version == reply.corpus_version
        assert status.corpus_region == regions.regions[0].name
    finally:
        regions.restart(process)
    _until_replicated(regions, reply.corpus_version)
    assert _replica_finds(replica, "demo", "glacier", text)
