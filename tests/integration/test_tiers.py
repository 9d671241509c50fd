# ruff: noqa: RUF001  (a question in Chinese, on purpose)
"""Tiers through the edge: each answers with its model; economy stands in for the LLM."""

from __future__ import annotations

import time

import grpc
import pytest
import tritonclient.grpc as triton
from google.protobuf import empty_pb2
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
    # A version Triton does not have is the request's mistake: NOT_FOUND, naming the field.
    with pytest.raises(grpc.RpcError) as err:
        _ask(stub, demo_key, tier="economy", model_version="9")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "model_version: economy has no version 9 being served"


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


def _status(stub, key):
    return stub.GetStatus(empty_pb2.Empty(), metadata=(("x-api-key", key),), timeout=30)


def test_a_long_question_in_any_script_drops_sources_before_it_is_refused(stub, demo_key, corpus):
    """Counted with SmolLM2's own tokenizer: 1,196 characters of Chinese (1,863 tokens with
    the template) fit the window alone, so the sources go and the question is answered."""
    question = "中文问题，没有空格，每个字都是一个或多个词元。" * 52
    reply = _ask_text(stub, demo_key, question, tier="standard", max_tokens=16, bypass_cache=True)
    assert reply.tier == "standard" and not reply.degraded
    assert 1800 < reply.usage.prompt_tokens < 2048 and not reply.citations  # no source fit


def test_an_answer_cut_by_the_window_says_length(stub, demo_key, corpus):
    """2,000 digits (SmolLM2 reads one token a digit) leave a few tokens of the 2,048 window
    for the answer: it ends with finish_reason "length", not "stop"."""
    reply = _ask_text(
        stub, demo_key, "1234567890" * 200, tier="standard", skip_retrieval=True, bypass_cache=True
    )
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == 2048
    assert reply.finish_reason == "length"
    economy = _ask(stub, demo_key, tier="economy", max_tokens=3, bypass_cache=True)
    assert economy.finish_reason == "length"  # an answer cut to (nearly) nothing


def test_a_question_that_cannot_fit_is_refused_before_any_model(stub, demo_key, corpus):
    """400 naming `query`, without the model's call, a breaker's count or a stand-in tier."""
    before = {d.target: d.breaker for d in _status(stub, demo_key).dependencies}
    for _ in range(4):  # more than breaker_failures
        with pytest.raises(grpc.RpcError) as err:
            _ask_text(stub, demo_key, "😀🎉👍🏽" * 500, tier="standard", bypass_cache=True)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("query: ")
    assert {d.target: d.breaker for d in _status(stub, demo_key).dependencies} == before
    assert _ask(stub, demo_key, tier="standard", max_tokens=4, bypass_cache=True).tier == "standard"


def _ask_text(stub, key, query, **fields):
    return stub.Generate(
        pb.GenerateRequest(query=query, **fields), metadata=(("x-api-key", key),), timeout=120
    )


def test_stop_seed_and_top_p_reach_the_model(stub, demo_key, corpus):
    def ask(**fields):
        return _ask(stub, demo_key, tier="standard", max_tokens=40, bypass_cache=True, **fields)

    # A stop string ends the answer and is left out of it.
    stopped = ask(stop=[","], skip_retrieval=True)
    assert "," not in stopped.answer and stopped.finish_reason == "stop"
    assert stopped.usage.completion_tokens < 40
    # At temperature 1, the same seed gives the same answer; top_p 1e-6 leaves one choice
    # per token, so two seeds agree as well.
    one, again = ask(temperature=1.0, seed=42), ask(temperature=1.0, seed=42)
    assert one.answer == again.answer
    assert ask(temperature=1.0, seed=7).answer != one.answer  # the seed is what held it
    narrow = [ask(temperature=1.0, top_p=1e-6, seed=s).answer for s in (1, 2)]
    assert narrow[0] == narrow[1]
