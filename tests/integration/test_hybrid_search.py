"""Hybrid search on the real mesh: a question naming an exact identifier finds the chunk
that answers it first through the edge (hybrid is the default), where the vectors alone rank
another first (one of the held-out identifier questions, tests/fixtures/identifier_set.jsonl,
where `make eval EVAL_ARGS=--retrieval` found the two apart)."""

from __future__ import annotations

import secrets
import time
import warnings
from pathlib import Path

import grpc
import pytest
from ragmesh.retrieval.v1 import retrieval_pb2 as rpb
from ragmesh.retrieval.v1 import retrieval_pb2_grpc
from ragmesh.v1 import admin_pb2 as apb
from ragmesh.v1 import admin_pb2_grpc
from ragmesh.v1 import gateway_pb2 as pb

from loadtest.eval.corpus import sample_documents

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = "When is shutil.SameFileError raised?"
ANSWER = "same file"  # its key fact


def _tenant(mesh) -> tuple[str, str]:
    """A tenant of its own (no other test's documents in its corpus) and its key."""
    with grpc.insecure_channel(mesh.edge_target) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        metadata = (("x-admin-key", mesh.config.mesh.demo_admin_key),)
        name = f"hybrid-{secrets.token_hex(4)}"
        admin.CreateTenant(apb.Tenant(name=name), metadata=metadata, timeout=10)
        created = admin.CreateKey(apb.CreateKeyRequest(tenant=name), metadata=metadata, timeout=10)
    return name, created.key


def _ingest(stub, key: str, documents) -> None:
    """Ingests once the gateway knows the key (it reloads keys every registry_refresh_s)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            request = pb.IngestDocumentsRequest(documents=documents)
            stub.IngestDocuments(request, metadata=(("x-api-key", key),), timeout=120)
            return
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
            assert time.monotonic() < deadline, "the gateway never knew the key"
            time.sleep(0.2)


def test_an_identifier_question_finds_its_document_first(mesh, stub, tmp_path: Path):
    tenant, key = _tenant(mesh)
    with warnings.catch_warnings():  # harvesting typing touches typing.io
        warnings.simplefilter("ignore", DeprecationWarning)
        documents = sample_documents(tmp_path, only={"python-shutil", "python-tempfile"})
    _ingest(stub, key, documents)
    hits = stub.Search(
        pb.SearchRequest(query=QUESTION, top_k=5), metadata=(("x-api-key", key),), timeout=30
    ).hits
    assert ANSWER in hits[0].text, [(h.chunk_id, h.heading) for h in hits]

    target = f"127.0.0.1:{mesh.regions[0].config.retrieval.port}"
    with grpc.insecure_channel(target) as channel:
        retrieval = retrieval_pb2_grpc.RetrievalStub(channel)
        ranked = {
            hybrid: retrieval.Search(
                rpb.SearchRequest(tenant=tenant, query=QUESTION, top_k=5, hybrid=hybrid),
                timeout=30,
            ).chunks
            for hybrid in (True, False)
        }
    assert [c.chunk_id for c in ranked[True]] == [h.chunk_id for h in hits]
    # The premise: by vector alone another chunk comes first.
    assert ANSWER not in ranked[False][0].text, [c.chunk_id for c in ranked[False]]
    # Either way a chunk's score is its cosine to the question.
    cosines = {c.chunk_id: c.score for c in ranked[False]}
    for chunk in ranked[True]:
        if chunk.chunk_id in cosines:
            assert chunk.score == pytest.approx(cosines[chunk.chunk_id], abs=1e-5)
