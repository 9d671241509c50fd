"""The `standard` Triton model (SmolLM2-135M on llama.cpp) on a real tritonserver.

Own process, free ports, explicit load of `standard` only; always stopped.
"""

from __future__ import annotations

import json
import queue
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from services.gateway.prompt import Source, build_prompt

pytestmark = pytest.mark.integration

MODEL = "standard"

SOURCES = [
    "Paris is the capital and largest city of France. It has two million residents.",
    "Berlin is the capital of Germany. It is known for its museums.",
]


@dataclass
class Reply:
    """One streamed response (or error) from the model."""

    text: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    final: bool
    error: str | None = None


@dataclass
class Server:
    url: str
    log: Path


def _prompt(question: str, texts: list[str] = SOURCES) -> str:
    """The gateway's own prompt, built by its own code."""
    return build_prompt(
        question, [Source(f"doc{i}", f"doc{i}:0", t) for i, t in enumerate(texts, 1)]
    )


@pytest.fixture(scope="module")
def server(triton_only) -> Server:
    return Server(
        f"127.0.0.1:{triton_only.config.triton.grpc_port}",
        triton_only.run_dir / "logs" / "triton.log",
    )


def _inputs(
    text: str,
    max_tokens: int,
    stream: bool | None,
    temperature: float | None = 0.0,
    seed: int | None = None,
    stop_words: list[str] | None = None,
) -> list[grpcclient.InferInput]:
    def tensor(name: str, dtype: str, value: np.ndarray[Any, Any]) -> grpcclient.InferInput:
        item = grpcclient.InferInput(name, list(value.shape), dtype)
        item.set_data_from_numpy(value)
        return item

    inputs = [
        tensor("text_input", "BYTES", np.array([[text.encode()]], dtype=np.object_)),
        tensor("max_tokens", "INT32", np.array([[max_tokens]], dtype=np.int32)),
    ]
    if temperature is not None:
        inputs.append(tensor("temperature", "FP32", np.array([[temperature]], dtype=np.float32)))
    if seed is not None:
        inputs.append(tensor("random_seed", "UINT64", np.array([[seed]], dtype=np.uint64)))
        inputs.append(tensor("top_k", "INT32", np.array([[40]], dtype=np.int32)))
        inputs.append(tensor("top_p", "FP32", np.array([[0.9]], dtype=np.float32)))
    if stream is not None:
        inputs.append(tensor("stream", "BOOL", np.array([[stream]], dtype=np.bool_)))
    if stop_words:
        words = np.array([[w.encode() for w in stop_words]], dtype=np.object_)
        inputs.append(tensor("stop_words", "BYTES", words))
    return inputs


def _generate(
    url: str,
    text: str,
    max_tokens: int = 32,
    stream: bool | None = True,
    cancel_after: int | None = None,
    model: str = MODEL,
    **options: Any,
) -> list[Reply]:
    """Run one request on a stream; collect replies until FINAL (or cancel after N)."""
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    client.async_stream_infer(
        model, _inputs(text, max_tokens, stream, **options), enable_empty_final_response=True
    )
    out: list[Reply] = []
    cancelled = False
    try:
        while True:
            result, error = replies.get(timeout=60)  # generous: the CPU may be shared
            if error is not None:
                out.append(Reply(None, None, None, True, str(error)))
                break
            final = result.get_response().parameters["triton_final_response"].bool_param
            text_out = result.as_numpy("text_output")
            if text_out is None:
                out.append(Reply(None, None, None, final))
            else:
                out.append(
                    Reply(
                        text_out.reshape(-1)[0].decode(),
                        int(result.as_numpy("prompt_tokens").reshape(-1)[0]),
                        int(result.as_numpy("completion_tokens").reshape(-1)[0]),
                        final,
                    )
                )
            if final:
                break
            if cancel_after is not None and len(out) >= cancel_after:
                client.stop_stream(cancel_requests=True)
                cancelled = True
                break
    finally:
        if not cancelled:
            client.stop_stream()
        client.close()
    return out


def _text(replies: list[Reply]) -> str:
    return "".join(r.text or "" for r in replies)


def test_streaming_sends_token_deltas_then_final(server: Server) -> None:
    replies = _generate(server.url, _prompt("What is the capital of France?"), max_tokens=24)
    assert all(r.error is None for r in replies)
    assert len(replies) > 3
    assert [r.final for r in replies] == [False] * (len(replies) - 1) + [True]
    assert _text(replies).strip()
    prompt_tokens = {r.prompt_tokens for r in replies}
    assert len(prompt_tokens) == 1 and (replies[0].prompt_tokens or 0) > 50
    completions = [r.completion_tokens or 0 for r in replies]
    assert completions == sorted(completions) and completions[0] >= 1
    assert completions[-1] <= 24


def test_non_streaming_sends_one_response(server: Server) -> None:
    for stream in (False, None):
        replies = _generate(server.url, _prompt("What is the capital of Germany?"), stream=stream)
        assert len(replies) == 1 and replies[0].final and replies[0].error is None
        assert (replies[0].text or "").strip()
        assert (replies[0].prompt_tokens or 0) > 50 and (replies[0].completion_tokens or 0) > 0


def test_max_tokens_caps_the_answer(server: Server) -> None:
    replies = _generate(server.url, _prompt("Describe Paris in detail."), max_tokens=8)
    assert replies[-1].final and 1 <= (replies[-1].completion_tokens or 0) <= 8
    assert all((r.completion_tokens or 0) <= 8 for r in replies)


def test_greedy_is_deterministic(server: Server) -> None:
    prompt = _prompt("What is the capital of France?")
    first = _generate(server.url, prompt, max_tokens=24, stream=False, temperature=0.0)
    second = _generate(server.url, prompt, max_tokens=24, stream=True, temperature=0.0)
    assert first[0].text == _text(second)
    # absent temperature means greedy as well
    third = _generate(server.url, prompt, max_tokens=24, stream=False, temperature=None)
    assert third[0].text == first[0].text


def test_seeded_sampling_is_reproducible(server: Server) -> None:
    prompt = _prompt("Tell me about Berlin.")
    runs = [
        _generate(server.url, prompt, max_tokens=16, stream=False, temperature=0.9, seed=11)
        for _ in range(2)
    ]
    assert runs[0][0].text == runs[1][0].text


def test_stop_words_cut_the_answer(server: Server) -> None:
    prompt = _prompt("What is the capital of France?")
    full = _generate(server.url, prompt, max_tokens=24, stream=False)[0].text or ""
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    for stream in (False, True):
        replies = _generate(server.url, prompt, max_tokens=24, stream=stream, stop_words=[stop])
        text = _text(replies)
        assert stop not in text and full.startswith(text)
        assert text == full[: full.index(stop)]


def test_cancellation_frees_the_model(server: Server) -> None:
    prompt = _prompt("Write a long essay about Paris and Berlin.")
    started = time.monotonic()
    replies = _generate(server.url, prompt, max_tokens=200, cancel_after=2)
    assert len(replies) == 2 and not replies[-1].final
    after = _generate(server.url, _prompt("What is the capital of Germany?"), max_tokens=4)
    assert after[-1].final and after[-1].error is None
    # 200 tokens take several seconds on 2 CPU cores; the worker stopped soon after the cancel.
    assert time.monotonic() - started < 10
    pattern = re.compile(r"(\d+) completion tokens, cancelled")
    deadline = time.monotonic() + 5  # the server's log may lag a little
    while not (cancelled := pattern.findall(server.log.read_text())):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert cancelled and int(cancelled[-1]) < 50


def test_prompt_over_the_context_window_is_an_error(server: Server) -> None:
    huge = _prompt("What is the capital of France?", SOURCES * 80)
    replies = _generate(server.url, huge, max_tokens=16)
    assert len(replies) == 1 and replies[0].error
    message = replies[0].error.split("] ", 1)[-1]  # "[StatusCode.…] text_input: …"
    assert message.startswith("text_input:") and "2048 tokens" in message
    # the model still serves
    assert _generate(server.url, _prompt("Capital of France?"), max_tokens=2)[-1].final


def test_max_tokens_is_trimmed_to_the_context_window(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    config = client.get_model_config(MODEL, as_json=True)["config"]
    small = json.loads(json.dumps(config))
    small["parameters"]["n_ctx"] = {"string_value": "200"}
    client.load_model(MODEL, config=json.dumps(small))
    try:
        replies = _generate(server.url, _prompt("Tell me everything."), max_tokens=500)
        last = replies[-1]
        assert last.final and last.error is None
        assert (last.prompt_tokens or 0) + (last.completion_tokens or 0) <= 200
    finally:
        client.load_model(MODEL, config=json.dumps(config))
        client.close()


def test_max_tokens_zero_is_an_error(server: Server) -> None:
    replies = _generate(server.url, _prompt("What is the capital of France?"), max_tokens=0)
    assert len(replies) == 1 and replies[0].error and "max_tokens" in replies[0].error
