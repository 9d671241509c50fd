"""Tiers through the edge: each answers with its model; economy stands in for the LLM."""

from __future__ import annotations

import time

import grpc
import pytest
import tritonclient.grpc as triton
from ragmesh.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.integration


def _ask(stub, key, **fields):
    return stub.Generate(
        pb.GenerateRequest(query="How hot should water be for green tea?", **fields),
        metadata=(("x-api-key", key),),
        timeout=120,
    )


def test_default_tier_is_the_cpu_llm(stub, demo_key, corpus):
    reply = _ask(stub, demo_key, max_tokens=32)
    assert reply.tier == "standard"
    assert reply.model == "standard/1"
    assert reply.answer.strip()
    assert 0 < reply.usage.completion_tokens <= 32
    assert reply.usage.prompt_tokens > 50
    assert {c.document_id for c in reply.citations} <= {"tea", "bikes", "volcano"}


def test_each_tier_can_be_named_and_a_version_pinned(stub, demo_key, corpus):
    for tier in ("standard", "economy"):
        reply = _ask(stub, demo_key, tier=tier, model_version="1", max_tokens=16)
        assert (reply.tier, reply.model) == (tier, f"{tier}/1")
    with pytest.raises(grpc.RpcError) as err:
        _ask(stub, demo_key, tier="economy", model_version="9")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "economy" in err.value.details()


def test_with_the_llm_unloaded_economy_answers_marked_degraded(mesh, stub, demo_key, corpus):
    client = triton.InferenceServerClient(f"127.0.0.1:{mesh.config.triton.grpc_port}")
    client.unload_model("standard")
    try:
        started = time.monotonic()
        reply = _ask(stub, demo_key, tier="standard", bypass_cache=True)
        assert time.monotonic() - started < 5, "a missing model must fail fast, not hang"
        assert (reply.tier, reply.model) == ("economy", "economy/1")
        assert reply.degraded
        assert reply.degraded_reason == "tier standard unavailable: answered by economy"
        assert "80 degrees" in reply.answer and reply.citations
        # A pinned version asks for that very model: nothing stands in for it.
        with pytest.raises(grpc.RpcError) as err:
            _ask(stub, demo_key, tier="standard", model_version="1")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        client.load_model("standard")
        client.close()
    assert _ask(stub, demo_key, max_tokens=8).tier == "standard"


def test_embedder_answers_a_repeated_text_from_the_response_cache(mesh):
    import numpy as np

    client = triton.InferenceServerClient(f"127.0.0.1:{mesh.config.triton.grpc_port}")
    data = np.array([[b"a sentence the cache has not seen yet"]], dtype=np.object_)
    tensor = triton.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(data)

    def hits() -> int:
        stats = client.get_inference_statistics("embedder", as_json=True)
        return int(stats["model_stats"][0]["inference_stats"].get("cache_hit", {}).get("count", 0))

    before = hits()
    first = client.infer("embedder", [tensor]).as_numpy("embedding")
    second = client.infer("embedder", [tensor]).as_numpy("embedding")
    assert hits() == before + 1
    assert np.array_equal(first, second)
    client.close()
