"""Generation from a Triton LLM tier over the gRPC stream API, on a TritonClient's stub.

Every tier takes the tensor names of TensorRT-LLM's `inflight_batcher_llm` ensemble
(`text_input`, `max_tokens`, `stream`, `temperature` -> `text_output`), so one client
serves the CPU models here and the TensorRT-LLM engines on GPU nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
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


# Triton's request parameter that makes it mark a decoupled request's last response
# (`triton_final_response`), which a stream carrying many requests needs to end each one.
_FINAL_RESPONSE = "triton_enable_empty_final_response"
_FINAL = "triton_final_response"


class SharedStream:
    """One long-lived ModelStreamInfer call to a Triton that carries many unary requests,
    told apart by their `id`: no gRPC stream set up per request (`make bench-triton-streams`
    measured 0.58 ms of client CPU an answer with a stream each, 0.28 with this one).

    What it cannot do: cancel a request in Triton once sent (cancelling the call would end
    every request on it; a request whose caller left or timed out goes on in the model,
    its answer dropped), or carry a request's own trace context (Triton reads it from the
    call's metadata). A call that fails or ends fails every request waiting on it; the
    next request opens a new one.
    """

    def __init__(self, client: TritonClient, recovery: StubRecovery) -> None:
        self._stub = client.stub
        self._recovery = recovery
        self._queue: asyncio.Queue[Any] | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        # id -> (request, responses so far, the caller's future)
        self._waiting: dict[str, tuple[Any, list[Any], asyncio.Future[list[Any]]]] = {}

    async def infer(self, request: Any, timeout_s: float) -> list[Any]:
        """The responses to one request, its last included; raises what
        TritonLLM.stream raises (DeadlineExceeded after `timeout_s` seconds)."""
        if self._queue is None:
            self._open()
        assert self._queue is not None
        request.parameters[_FINAL_RESPONSE].bool_param = True
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = (request, [], done)
        self._queue.put_nowait(request)
        try:
            async with asyncio.timeout(timeout_s):
                return await done
        except TimeoutError as exc:
            raise DeadlineExceeded(_TIMED_OUT) from exc
        finally:
            self._waiting.pop(request.id, None)  # the answer of one that left is dropped

    def _open(self) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queue = queue
        self._call = self._stub.ModelStreamInfer(_drain(queue))
        self._reader = asyncio.get_running_loop().create_task(self._read(self._call))

    async def _read(self, call: Any) -> None:
        error: RagmeshError = Unavailable("llm unavailable: Triton ended the stream")
        try:
            async for response in call:
                self._deliver(response)
        except grpc.aio.AioRpcError as exc:
            error = from_status(exc.code(), exc.details() or "", "llm", timeout=_TIMED_OUT)
        except asyncio.CancelledError:
            error = Unavailable("llm unavailable: the client closed")
            raise
        finally:
            if self._call is call:
                self._queue = self._call = self._reader = None
            waiting, self._waiting = self._waiting, {}
            for _, _, done in waiting.values():
                if not done.done():
                    done.set_exception(error)

    def _deliver(self, response: Any) -> None:
        answer = response.infer_response
        waiting = self._waiting.get(answer.id)
        if waiting is None:  # its caller left
            return
        request, parts, done = waiting
        if response.error_message:  # a request's error is its last response
            self._recovery.notice(request.model_name, response.error_message)
            del self._waiting[answer.id]
            done.set_exception(
                _error(response.error_message, request.model_name, request.model_version)
            )
            return
        if answer.outputs:
            parts.append(answer)
        if answer.parameters[_FINAL].bool_param:
            del self._waiting[answer.id]
            done.set_result(parts)

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def _drain(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while True:
        yield await queue.get()


class TritonLLM:
    """One Triton server's LLM models, on `client`; a tier names the model (and maybe its
    version). Closing it closes the client."""

    def __init__(self, client: TritonClient) -> None:
        self.target = client.target
        self._client = client
        self._stub = client.stub
        self._recovery = StubRecovery(client)
        self._shared = SharedStream(client, self._recovery)

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
        shared: bool = False,
    ) -> AsyncGenerator[Delta]:
        """Yields deltas until the model's final response (not `stream`: one delta, the whole
        answer); cancelling stops generation. `prefix`: the answer so far, which the model
        goes on from (its `assistant_prefix`; the deltas are what follows it). `shared`: a
        unary answer without trace context (`headers` empty) goes on the SharedStream, and
        cancelling no longer stops its generation."""
        request = _request(model, version, prompt, sampling, stream, prefix)
        if shared and not stream and not headers:
            for answer in await self._shared.infer(request, max(timeout_s, 0.001)):
                yield _delta(answer)
            return
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
        await self._shared.close()
        await self._client.close()
