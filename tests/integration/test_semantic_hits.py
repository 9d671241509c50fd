"""The semantic cache through the edge: a question worded differently takes the cached
answer, in its own scope only, and says what it matched; a near-miss never does."""

from __future__ import annotations

import grpc
import pytest
from ragmesh.v1 import gateway_pb2 as pb

from tests.integration.test_control_plane import _tenant, _until_usable

pytestmark = pytest.mark.integration

ASKED = "What temperature should the water be for brewing green tea leaves?"
REWORDED = "What water temperature should I use to brew green tea leaves?"


def _ask(stub, key: str, query: str, **fields) -> pb.GenerateResponse:
    fields.setdefault("tier", "economy")
    return stub.Generate(
        pb.GenerateRequest(query=query, **fields), metadata=(("x-api-key", key),), timeout=60
    )


def test_a_reworded_question_takes_the_answer_and_says_what_it_matched(
    stub, demo_key, other_key, corpus
):
    first = _ask(stub, demo_key, ASKED)
    assert first.cache_status == pb.CACHE_STATUS_MISS and first.finish_reason == "stop"
    again = _ask(stub, demo_key, REWORDED)
    assert again.cache_status == pb.CACHE_STATUS_HIT
    assert (again.answer, again.usage.cost_usd) == (first.answer, 0.0)
    match = again.cache_match
    assert (match.kind, match.trace_id) == ("semantic", first.trace_id)
    assert 0.8 <= match.similarity < 1.0
    # A near-miss (another tea) asks the model; so does another tenant, and critical traffic.
    near = _ask(
        stub, demo_key, "What temperature should the water be for brewing black tea leaves?"
    )
    assert near.cache_status == pb.CACHE_STATUS_MISS
    assert _ask(stub, other_key, REWORDED).cache_status == pb.CACHE_STATUS_MISS
    critical = _ask(stub, demo_key, "Which water temperature suits brewing green tea leaves?",
                    priority="critical")  # fmt: skip
    assert critical.cache_status == pb.CACHE_STATUS_MISS
    # The same request again is the exact cache's, which names the first request too.
    exact = _ask(stub, demo_key, ASKED)
    assert (exact.cache_match.kind, exact.cache_match.trace_id) == ("exact", first.trace_id)


def test_a_streamed_answer_fills_it_and_a_cut_one_never_does(stub, demo_key, corpus):
    meta = (("x-api-key", demo_key),)
    request = pb.GenerateRequest(query="How long should green tea leaves steep in water?",
                                 tier="economy")  # fmt: skip
    events = list(stub.GenerateStream(request, metadata=meta, timeout=60))
    assert events[-1].final.finish_reason == "stop"
    hit = _ask(stub, demo_key, "For how long should I steep green tea leaves in water?")
    assert (hit.cache_match.kind, hit.cache_match.trace_id) == (
        "semantic",
        events[-1].final.trace_id,
    )
    # An answer cut by max_tokens is not whole: no question worded differently takes it.
    cut = _ask(stub, demo_key, "Why does boiling water make green tea taste bitter?",
               tier="standard", max_tokens=2, bypass_cache=False)  # fmt: skip
    assert cut.finish_reason == "length"
    again = _ask(stub, demo_key, "Why does green tea taste bitter with boiling water?",
                 tier="standard", max_tokens=2)  # fmt: skip
    assert again.cache_status == pb.CACHE_STATUS_MISS


def test_a_new_corpus_version_is_a_new_scope(mesh, stub):
    _, key, _ = _tenant(mesh)
    _until_usable([mesh.edge_target], key)
    meta = (("x-api-key", key),)

    def ingest(doc_id: str, text: str) -> None:
        document = pb.Document(id=doc_id, title="Kettles", text=text)
        stub.IngestDocuments(
            pb.IngestDocumentsRequest(documents=[document]), metadata=meta, timeout=120
        )

    ingest("kettle", "An electric kettle switches itself off when the water boils.")
    first = _ask(stub, key, "Does an electric kettle switch itself off when the water boils?")
    assert (
        _ask(
            stub, key, "Will an electric kettle turn itself off once water boils?"
        ).cache_match.kind
        == "semantic"
    )
    ingest("kettle-2", "A stovetop kettle whistles when the water boils.")
    after = _ask(stub, key, "Will an electric kettle turn itself off once water boils?")
    assert (
        after.cache_status == pb.CACHE_STATUS_MISS and after.corpus_version != first.corpus_version
    )
    with pytest.raises(grpc.RpcError):  # a cached answer is no way around a tenant's key
        _ask(stub, "rmk-not-a-key", "Will an electric kettle turn itself off once water boils?")
