"""The `economy` model (the extractive tier) on its own tritonserver (free ports, explicit load)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from tier_client import Reply, generate, rag_prompt

pytestmark = pytest.mark.integration

REFUSAL = "The sources do not contain an answer to this question."


@pytest.fixture(scope="module")
def triton_url(triton_only) -> str:
    return f"127.0.0.1:{triton_only.config.triton.grpc_port}"


def test_streaming_sends_word_deltas_then_final(triton_url: str) -> None:
    replies = _ask(triton_url, rag_prompt("What is the capital of France?"), stream=True)
    assert len(replies) > 3
    assert [r.final for r in replies] == [False] * (len(replies) - 1) + [True]
    text = "".join(r.text or "" for r in replies)
    assert text == "Paris is the capital and largest city of France. [1]"
    assert replies[0].text == "Paris "
    assert {r.prompt_tokens for r in replies} == {replies[0].prompt_tokens}
    assert (replies[0].prompt_tokens or 0) > 50
    completions = [r.completion_tokens or 0 for r in replies]
    assert completions == sorted(completions) and completions[0] >= 1


def test_non_streaming_sends_one_response(triton_url: str) -> None:
    for stream in (False, None):
        replies = _ask(triton_url, rag_prompt("What is the capital of Germany?"), stream=stream)
        assert len(replies) == 1 and replies[0].final
        assert replies[0].text == "Berlin is the capital of Germany. [2]"
        assert replies[0].prompt_tokens and replies[0].completion_tokens


def test_refuses_without_an_answer(triton_url: str) -> None:
    for prompt in (
        rag_prompt("Who wrote Hamlet?"),
        rag_prompt("Who wrote Hamlet?", []),
        "no format",
    ):
        replies = _ask(triton_url, prompt, stream=False)
        assert replies[0].text == REFUSAL


def test_max_tokens_budget_and_stop_words(triton_url: str) -> None:
    replies = _ask(triton_url, rag_prompt("What is the capital of France?"), max_tokens=5)
    assert replies[-1].final and replies[-1].completion_tokens == 5
    # cut to the budget, the sentence keeps its citation, and the answer says it was cut
    assert "".join(r.text or "" for r in replies).strip() == "Paris … [1]"
    assert replies[-1].finish_reason == "length"
    assert [r.finish_reason for r in replies[:-1]] == [""] * (len(replies) - 1)
    whole = _ask(triton_url, rag_prompt("What is the capital of France?"), stream=False)
    assert whole[0].finish_reason == "stop"
    for max_tokens in (1, 3):  # nothing but a cut piece fits: never a natural end
        cut = _ask(triton_url, rag_prompt("What is the capital of France?"), max_tokens=max_tokens)
        assert cut[-1].finish_reason == "length"
    replies = _ask(
        triton_url, rag_prompt("What is the capital of France?"), stream=False, stop_words=["city"]
    )
    assert replies[0].text == "Paris is the capital and largest"


def test_max_tokens_zero_is_an_error(triton_url: str) -> None:
    replies = _ask(triton_url, rag_prompt("What is the capital of France?"), max_tokens=0)
    assert len(replies) == 1 and replies[0].error and "max_tokens" in replies[0].error


def test_cancellation_does_not_wedge_the_model(triton_url: str) -> None:
    client = grpcclient.InferenceServerClient(triton_url)
    config = client.get_model_config("economy", as_json=True)["config"]
    slow = json.loads(json.dumps(config))
    slow["parameters"]["token_delay_ms"] = {"string_value": "100"}
    client.load_model("economy", config=json.dumps(slow))
    try:
        prompt = rag_prompt("What is the capital of France?")
        started = time.monotonic()
        replies = _ask(triton_url, prompt, cancel_after=2)
        assert len(replies) == 2 and not replies[-1].final
        after = _ask(triton_url, rag_prompt("What is the capital of Germany?"), stream=False)
        assert after[0].text == "Berlin is the capital of Germany. [2]"
        assert time.monotonic() - started < 5
    finally:
        client.load_model("economy", config=json.dumps(config))
        client.close()


def _ask(url: str, text: str, **kwargs: Any) -> list[Reply]:
    """Every request carries the sampling knobs: economy accepts and ignores them."""
    return generate(url, "economy", text, temperature=0.7, seed=7, **kwargs)
