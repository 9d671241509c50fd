"""Generation from a Triton LLM tier over the gRPC stream API, on a TritonClient's stub.

Every tier takes the tensor names of TensorRT-LLM's `inflight_batcher_llm` ensemble
(`text_input`, `max_tokens`, `stream`, `temperature` -> `text_output`), so one client
serves the CPU models here and the TensorRT-LLM engines on GPU nodes.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RagmeshError,
    Unavailable,
    from_status,
)
from services.contract import tensors
from services.triton.client import TritonClient, decode_bytes, encode_bytes
from services.triton.recovery import StubRecovery


@dataclass(frozen=True)
class Delta:
    """Text the model produced since the last delta; counts are running totals (or -1).

    `finish_reason` is the model's own, on its last delta ("stop", "length"); "" on the
    deltas before it, and from a model without that output (the TensorRT-LLM ensemble)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model_version: str
    finish_reason: str = ""


@dataclass(frozen=True)
class Sampling:
    """How an answer is sampled, in OpenAI's terms (the tier contract's tensors in brackets).

    max_tokens: answer tokens at most (max_tokens); temperature 0..2, 0 greedy (temperature);
    top_p in (0, 1], 1 the whole distribution (top_p); stop: strings that end the answer,
    left out of it (stop_words); seed: the sampler's seed, None a random one (random_seed);
    user: the end user's id, which an upstream tier passes on as OpenAI's `user` (Triton
    tiers take none).
    """

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    user: str = ""


_SHAPE = (1, 1)  # a batch of one


def _request(
    model: str, version: str, prompt: str, sampling: Sampling, stream: bool, prefix: str = ""
) -> Any:
    """The ModelInferRequest, raw little-endian tensors as Triton's gRPC API takes them: no
    numpy arrays or client-library wrappers per call. top_p, random_seed and stop_words only
    when set (below 1; a model then draws its own seed, and stops at its end token alone),
    so a model that declares the four required inputs alone serves the rest."""
    request = service_pb2.ModelInferRequest(
        model_name=model, model_version=version, id=uuid.uuid4().hex
    )
    raw = [
        ("text_input", _SHAPE, encode_bytes((prompt.encode(),))),
        ("max_tokens", _SHAPE, struct.pack("<i", sampling.max_tokens)),
        ("stream", _SHAPE, b"\x01" if stream else b"\x00"),
        ("temperature", _SHAPE, struct.pack("<f", sampling.temperature)),
    ]
    if sampling.top_p < 1.0:
        raw.append(("top_p", _SHAPE, struct.pack("<f", sampling.top_p)))
    if sampling.seed is not None:
        # OpenAI's seed is an int64; the tensor a UINT64: the same 64 bits.
        raw.append(("random_seed", _SHAPE, struct.pack("<Q", sampling.seed % 2**64)))
    if sampling.stop:
        stops = encode_bytes(s.encode() for s in sampling.stop)
        raw.append(("stop_words", (1, len(sampling.stop)), stops))
    if prefix:  # a continuation: only a model that declares the input takes it
        raw.append(("assistant_prefix", _SHAPE, encode_bytes((prefix.encode(),))))
    for name, shape, contents in raw:
        request.inputs.add(name=name, datatype=tensors.INPUT[name].datatype, shape=shape)
        request.raw_input_contents.append(contents)
    return request


def _delta(response: Any) -> Delta:
    """A streamed response's text and counts, read from its raw output tensors."""
    outputs = {
        o.name: raw for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    return Delta(
        text=_string(outputs.get("text_output", b"")),
        prompt_tokens=_count(outputs.get("prompt_tokens")),
        completion_tokens=_count(outputs.get("completion_tokens")),
        model_version=response.model_version,
        finish_reason=_string(outputs.get("finish_reason", b"")),
    )


def _string(raw: bytes) -> str:
    """A BYTES tensor's elements, joined."""
    return b"".join(decode_bytes(raw)).decode()


def _count(raw: bytes | None) -> int:
    return struct.unpack_from("<i", raw)[0] if raw and len(raw) >= 4 else -1


_TIMED_OUT = "generation timed out"

# A model names the input tensor a request got wrong ("max_tokens: must be >= 1"); the
# request's field that fills it.
_FIELDS = {
    "text_input": "query",
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "stream": "stream",
    "top_p": "top_p",
    "random_seed": "seed",
    "stop_words": "stop",
}


def _error(message: str, model: str, version: str) -> RagmeshError:
    """A model's or Triton's error as the gateway's: the request's own mistakes (a bad input,
    a pinned version Triton does not serve) name the field; anything else is the server's."""
    tensor, _, why = message.partition(": ")
    if tensor in _FIELDS:
        field = _FIELDS[tensor]
        return InvalidArgument(f"{field}: the model refused it: {why}", field=field)
    # Triton's words for a version it does not have (core/src/model_repository_manager.cc);
    # one it has but not ready (the model unloaded) is the server's state, not the request's.
    if version and "failed to get model version" in message:  # one Triton cannot parse
        return InvalidArgument(
            f"model_version: {version!r} is not a version Triton reads", field="model_version"
        )
    if version and f"version {version} is not found" in message:
        return NotFound(
            f"model_version: {model} has no version {version} being served",
            field="model_version",
        )
    if "deadline" in message.lower():
        return DeadlineExceeded(_TIMED_OUT)
    return Unavailable(f"llm unavailable: {message}")


class TritonLLM:
    """One Triton server's LLM models, on `client`; a tier names the model (and maybe its
    version). Closing it closes the client."""

    def __init__(self, client: TritonClient) -> None:
        self.target = client.target
        self._client = client
        self._stub = client.stub
        self._recovery = StubRecovery(client)

    async def stream(
        self,
        model: str,
        version: str,
        prompt: str,
        sampling: Sampling,
        *,
        stream: bool,
        timeout_s: float,
        headers: dict[str, str],
        prefix: str = "",
    ) -> AsyncGenerator[Delta]:
        """Yields deltas until the model's final response (not `stream`: one delta, the whole
        answer); cancelling stops generation. `prefix`: the answer so far, which the model
        goes on from (its `assistant_prefix`; the deltas are what follows it)."""
        request = _request(model, version, prompt, sampling, stream, prefix)
        call = self._stub.ModelStreamInfer(
            iter([request]), timeout=max(timeout_s, 0.001), metadata=tuple(headers.items())
        )
        try:
            async for response in call:
                if response.error_message:
                    self._recovery.notice(model, response.error_message)
                    raise _error(response.error_message, model, version)
                yield _delta(response.infer_response)
        except grpc.aio.AioRpcError as exc:
            self._recovery.notice(model, exc.details() or "")
            raise from_status(exc.code(), exc.details() or "", "llm", timeout=_TIMED_OUT) from exc
        finally:
            call.cancel()

    async def ready(self, model: str, version: str = "") -> bool:
        return await self._client.ready(model, version)

    async def close(self) -> None:
        await self._client.close()
