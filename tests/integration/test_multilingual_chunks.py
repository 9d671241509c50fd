"""Text without spaces through the real mesh (issue 13, part 2): Chinese prose is chunked by
the embedder's tokens, so a fact at its end is found as well as one at its start, and a
long run without spaces is stored in bounded chunks instead of being refused."""

from __future__ import annotations

import pytest
from multilingual import FACT, ZH
from ragmesh.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.integration

PREFIX = "multilingual-"  # every document id here: no other test's
QUERY = "When was the Zorblax reactor commissioned?"
# Measured (numpy MiniLM on CPU): the late fact's chunk 0.832, the early one's 0.806, the
# best chunk of prose alone 0.18. With the word chunker before, each document was one chunk
# the embedder read the first 256 tokens of: 0.549 early, 0.144 late (this test failed).
SCORE_GAP = 0.05


def _prose(sentences: int = 110) -> str:
    """About 3,000 characters of Chinese, no spaces, each sentence numbered."""
    return "".join(f"{i}{ZH[i % len(ZH)]}" for i in range(sentences))


@pytest.fixture(scope="module")
def placed(stub, demo_key):
    metadata = (("x-api-key", demo_key),)
    prose = _prose()
    documents = [
        pb.Document(id=f"{PREFIX}early", title="中国的河流与朝代", text=f"{FACT}{prose}"),
        pb.Document(id=f"{PREFIX}late", title="中国的河流与朝代", text=f"{prose}{FACT}"),
        pb.Document(id=f"{PREFIX}thai", title="ไทย", text="ภาษาไทยไม่มีช่องว่างระหว่างคำ" * 700),
    ]
    reply = stub.IngestDocuments(
        pb.IngestDocumentsRequest(documents=documents), metadata=metadata, timeout=120
    )
    yield reply
    for document in documents:
        stub.DeleteDocument(pb.DeleteDocumentRequest(id=document.id), metadata=metadata, timeout=30)


def test_a_late_fact_is_found_as_well_as_an_early_one(stub, demo_key, placed):
    assert len(_prose()) >= 3000
    assert placed.documents == 3 and placed.chunks > 40  # not one chunk a document
    hits = stub.Search(
        pb.SearchRequest(query=QUERY, top_k=10), metadata=(("x-api-key", demo_key),), timeout=30
    ).hits
    best: dict[str, pb.SearchHit] = {}
    for hit in hits:  # best first
        best.setdefault(hit.document_id, hit)
    early, late = best.get(f"{PREFIX}early"), best.get(f"{PREFIX}late")
    assert early is not None and late is not None, [(h.document_id, h.score) for h in hits]
    assert FACT in early.text and FACT in late.text
    assert {hits[0].document_id, hits[1].document_id} == {early.document_id, late.document_id}
    assert late.score >= early.score - SCORE_GAP, (early.score, late.score)


def test_a_long_run_without_spaces_is_stored_in_bounded_chunks(stub, demo_key, placed):
    """20,300 characters of Thai, one [UNK] token to the embedder: chunks of at most
    chunk_chars characters (2,048), instead of "a run of text without spaces too long"."""
    hits = stub.Search(
        pb.SearchRequest(query="ภาษาไทย", top_k=50),
        metadata=(("x-api-key", demo_key),),
        timeout=30,
    ).hits
    thai = [h for h in hits if h.document_id == f"{PREFIX}thai"]
    assert len(thai) >= 10
    assert all(0 < len(h.text) <= 2048 for h in thai)
