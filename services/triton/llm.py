"""Generation from a Triton LLM tier over the gRPC stream API, on a TritonClient's stub.

Every tier takes the tensor names of TensorRT-LLM's `inflight_batcher_llm` ensemble
(`text_input`, `max_tokens`, `stream`, `temperature` -> `text_output`), so one client
serves the CPU models here and the TensorRT-LLM engines on GPU nodes.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncIterator
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


# The contract's inputs that a request fills, in the order of its raw contents (_request).
_INPUTS = tensors.wire(("text_input", "max_tokens", "stream", "temperature"))
_SHAPE = (1, 1)  # a batch of one


def _request(
    model: str, version: str, prompt: str, max_tokens: int, temperature: float, stream: bool
) -> Any:
    """The ModelInferRequest, raw little-endian tensors as Triton's gRPC API takes them: no
    numpy arrays or client-library wrappers per call."""
    request = service_pb2.ModelInferRequest(
        model_name=model, model_version=version, id=uuid.uuid4().hex
    )
    for name, datatype in _INPUTS:
        request.inputs.add(name=name, datatype=datatype, shape=_SHAPE)
    request.raw_input_contents.extend(
        [
            encode_bytes((prompt.encode(),)),
            struct.pack("<i", max_tokens),
            b"\x01" if stream else b"\x00",
            struct.pack("<f", temperature),
        ]
    )
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
        *,
        max_tokens: int,
        temperature: float,
        stream: bool,
        timeout_s: float,
        headers: dict[str, str],
    ) -> AsyncIterator[Delta]:
        """Yields deltas until the model's final response (not `stream`: one delta, the whole
        answer); cancelling stops generation."""
        request = _request(model, version, prompt, max_tokens, temperature, stream)
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
