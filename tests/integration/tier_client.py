"""A client of the LLM tiers' Triton contract, shared by the tier model tests."""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from services.contract.prompt import Source, build_prompt

SOURCES = [
    "Paris is the capital and largest city of France. It has two million residents.",
    "Berlin is the capital of Germany. It is known for its museums.",
]


def rag_prompt(question: str, texts: list[str] = SOURCES) -> str:
    """The gateway's own prompt, built by its own code."""
    sources = [Source(f"doc{i}", f"doc{i}:0", t) for i, t in enumerate(texts, 1)]
    return build_prompt(question, sources)


@dataclass
class Reply:
    """One streamed response (or error) from a tier model."""

    text: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    final: bool
    error: str | None = None
    finish_reason: str | None = None  # "" before the last response


def inputs(
    text: str,
    max_tokens: int,
    stream: bool | None,
    temperature: float | None = 0.0,
    seed: int | None = None,
    stop_words: list[str] | None = None,
    assistant_prefix: str | None = None,
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
    if assistant_prefix is not None:
        prefix = np.array([[assistant_prefix.encode()]], dtype=np.object_)
        inputs.append(tensor("assistant_prefix", "BYTES", prefix))
    return inputs


def generate(
    url: str,
    model: str,
    text: str,
    max_tokens: int = 32,
    stream: bool | None = True,
    cancel_after: int | None = None,
    **options: Any,
) -> list[Reply]:
    """Run one request on a stream; collect replies until FINAL (or cancel after N)."""
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    client.async_stream_infer(
        model, inputs(text, max_tokens, stream, **options), enable_empty_final_response=True
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
                reason = result.as_numpy("finish_reason")
                out.append(
                    Reply(
                        text_out.reshape(-1)[0].decode(),
                        int(result.as_numpy("prompt_tokens").reshape(-1)[0]),
                        int(result.as_numpy("completion_tokens").reshape(-1)[0]),
                        final,
                        finish_reason=None if reason is None else reason.reshape(-1)[0].decode(),
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
