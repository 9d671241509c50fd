# ruff: noqa: RUF001  (questions in Chinese and Japanese, on purpose)
"""The `standard` Triton model (SmolLM2-135M on llama.cpp) on a real tritonserver.

Own process, free ports, explicit load of `standard` only; always stopped.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from tier_client import SOURCES, Reply, generate, rag_prompt

from services.config.gateway import GatewayConfig
from services.contract.prompt import plain_prompt
from services.gateway.tiers import Tiers

pytestmark = pytest.mark.integration

MODEL = "standard"


@dataclass
class Server:
    url: str
    log: Path


@pytest.fixture(scope="module")
def server(triton_only) -> Server:
    return Server(
        f"127.0.0.1:{triton_only.config.triton.grpc_port}",
        triton_only.processes["triton-local"].log_path,
    )


def _text(replies: list[Reply]) -> str:
    return "".join(r.text or "" for r in replies)


def test_streaming_sends_token_deltas_then_final(server: Server) -> None:
    replies = _ask(server.url, rag_prompt("What is the capital of France?"), max_tokens=24)
    assert all(r.error is None for r in replies)
    assert len(replies) > 3
    assert [r.final for r in replies] == [False] * (len(replies) - 1) + [True]
    assert _text(replies).strip()
    prompt_tokens = {r.prompt_tokens for r in replies}
    assert len(prompt_tokens) == 1 and (replies[0].prompt_tokens or 0) > 50
    completions = [r.completion_tokens or 0 for r in replies]
    assert completions == sorted(completions) and completions[0] >= 1
    assert completions[-1] <= 24
    # Why it stopped, on the last response only, as the model saw it.
    assert [r.finish_reason for r in replies[:-1]] == [""] * (len(replies) - 1)
    assert replies[-1].finish_reason == ("length" if completions[-1] == 24 else "stop")


def test_non_streaming_sends_one_response(server: Server) -> None:
    for stream in (False, None):
        replies = _ask(server.url, rag_prompt("What is the capital of Germany?"), stream=stream)
        assert len(replies) == 1 and replies[0].final and replies[0].error is None
        assert (replies[0].text or "").strip()
        assert (replies[0].prompt_tokens or 0) > 50 and (replies[0].completion_tokens or 0) > 0


def test_max_tokens_caps_the_answer(server: Server) -> None:
    for stream in (True, False):
        replies = _ask(
            server.url, rag_prompt("Describe Paris in detail."), max_tokens=8, stream=stream
        )
        assert replies[-1].final and replies[-1].completion_tokens == 8
        assert all((r.completion_tokens or 0) <= 8 for r in replies)
        assert replies[-1].finish_reason == "length"


def test_greedy_is_deterministic(server: Server) -> None:
    prompt = rag_prompt("What is the capital of France?")
    first = _ask(server.url, prompt, max_tokens=24, stream=False, temperature=0.0)
    second = _ask(server.url, prompt, max_tokens=24, stream=True, temperature=0.0)
    assert first[0].text == _text(second)
    # absent temperature means greedy as well
    third = _ask(server.url, prompt, max_tokens=24, stream=False, temperature=None)
    assert third[0].text == first[0].text


def test_an_answer_cut_short_goes_on_from_its_prefix_as_if_never_cut(server: Server) -> None:
    """A continuation (issue 19): the same prompt with the answer so far as the start of the
    assistant's turn; greedy, what follows is what the uninterrupted answer said next, and
    the counts are the continuation's own (the prefix is prompt)."""
    prompt = rag_prompt("Write a long essay about Paris and Berlin.")
    whole = _ask(server.url, prompt, max_tokens=40, stream=False)[0]
    start = _ask(server.url, prompt, max_tokens=12, stream=False)[0]
    rest = _ask(server.url, prompt, max_tokens=28, stream=True, assistant_prefix=start.text)
    assert whole.text and start.text and whole.text.startswith(start.text)
    assert start.text + _text(rest) == whole.text
    last = rest[-1]
    assert last.completion_tokens == (whole.completion_tokens or 0) - 12
    assert (last.prompt_tokens or 0) > (whole.prompt_tokens or 0)


def test_seeded_sampling_is_reproducible(server: Server) -> None:
    prompt = rag_prompt("Tell me about Berlin.")
    runs = [
        _ask(server.url, prompt, max_tokens=16, stream=False, temperature=0.9, seed=11)
        for _ in range(2)
    ]
    assert runs[0][0].text == runs[1][0].text


def test_stop_words_cut_the_answer(server: Server) -> None:
    prompt = rag_prompt("What is the capital of France?")
    full = _ask(server.url, prompt, max_tokens=24, stream=False)[0].text or ""
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    for stream in (False, True):
        replies = _ask(server.url, prompt, max_tokens=24, stream=stream, stop_words=[stop])
        text = _text(replies)
        assert stop not in text and full.startswith(text)
        assert text == full[: full.index(stop)]
        assert replies[-1].finish_reason == "stop"


def test_cancellation_frees_the_model(server: Server) -> None:
    prompt = rag_prompt("Write a long essay about Paris and Berlin.")
    replies = _ask(server.url, prompt, max_tokens=200, cancel_after=2)
    assert len(replies) == 2 and not replies[-1].final
    after = _ask(server.url, rag_prompt("What is the capital of Germany?"), max_tokens=4)
    assert after[-1].final and after[-1].error is None
    # Not a timing: the model's own log says how far generation got before it stopped.
    pattern = re.compile(r"(\d+) completion tokens, cancelled")
    deadline = time.monotonic() + 5  # the server's log may lag a little
    while not (cancelled := pattern.findall(server.log.read_text())):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert cancelled and int(cancelled[-1]) < 50


def test_prompt_over_the_context_window_is_an_error(server: Server) -> None:
    huge = rag_prompt("What is the capital of France?", SOURCES * 80)
    replies = _ask(server.url, huge, max_tokens=16)
    assert len(replies) == 1 and replies[0].error
    message = replies[0].error.split("] ", 1)[-1]  # "[StatusCode.…] text_input: …"
    assert message.startswith("text_input:") and "2048 tokens" in message
    # the model still serves
    assert _ask(server.url, rag_prompt("Capital of France?"), max_tokens=2)[-1].final


def test_max_tokens_is_trimmed_to_the_context_window(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    config = client.get_model_config(MODEL, as_json=True)["config"]
    small = json.loads(json.dumps(config))
    small["parameters"]["n_ctx"] = {"string_value": "200"}
    client.load_model(MODEL, config=json.dumps(small))
    try:
        replies = _ask(server.url, rag_prompt("Tell me everything."), max_tokens=500)
        last = replies[-1]
        assert last.final and last.error is None
        assert (last.prompt_tokens or 0) + (last.completion_tokens or 0) <= 200
        total = (last.prompt_tokens or 0) + (last.completion_tokens or 0)
        assert last.finish_reason == ("length" if total == 200 else "stop")  # 200: the window
    finally:
        client.load_model(MODEL, config=json.dumps(config))
        client.close()


def test_max_tokens_zero_is_an_error(server: Server) -> None:
    replies = _ask(server.url, rag_prompt("What is the capital of France?"), max_tokens=0)
    assert len(replies) == 1 and replies[0].error and "max_tokens" in replies[0].error


@pytest.mark.parametrize(
    "question",
    [
        "What is the capital of France?",
        "中文的问题：法国的首都是哪里？",
        "日本語の質問です。フランスの首都はどこですか？",
        "emoji 😀🎉👍🏽 and digits 1234567890 ١٢٣",
        "<|im_end|> a literal chat marker <|im_start|>user",
    ],
)
def test_the_gateway_counts_a_prompt_as_the_model_does(server: Server, question: str) -> None:
    """The standard tier's tokenizer (read from the GGUF) and template_tokens give the
    model's own prompt_tokens exactly, in any script: prompts are fitted without a guess."""
    tier = Tiers(GatewayConfig()).get("standard")
    for prompt in (rag_prompt(question), plain_prompt(question)):
        replies = _ask(server.url, prompt, max_tokens=1, stream=False)
        assert replies[0].prompt_tokens == tier.count(prompt) + tier.config.template_tokens


def _ask(url: str, text: str, **kwargs: Any) -> list[Reply]:
    return generate(url, "standard", text, **kwargs)
