"""Generation from a Triton LLM tier over the gRPC stream API.

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
import tritonclient.grpc.aio as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from services.common import serving
from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RagmeshError,
    Unavailable,
)
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


_INPUTS = (
    ("text_input", "BYTES"),
    ("max_tokens", "INT32"),
    ("stream", "BOOL"),
    ("temperature", "FP32"),
)
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
    text = prompt.encode()
    request.raw_input_contents.extend(
        [
            struct.pack("<I", len(text)) + text,  # BYTES: a uint32 length, then the bytes
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
    """A BYTES tensor's elements, joined: each is a uint32 length, then the bytes."""
    parts, at = [], 0
    while at + 4 <= len(raw):
        (size,) = struct.unpack_from("<I", raw, at)
        parts.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return b"".join(parts).decode()


def _count(raw: bytes | None) -> int:
    return struct.unpack_from("<i", raw)[0] if raw and len(raw) >= 4 else -1


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
        return DeadlineExceeded("generation timed out")
    return Unavailable(f"llm unavailable: {message}")


class TritonLLM:
    """One Triton server's LLM models; a tier names the model (and maybe its version)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = serving.new_channel(target)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._client = triton.InferenceServerClient(target)  # readiness and model control
        self._recovery = StubRecovery(self._client)

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
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded("generation timed out") from exc
            self._recovery.notice(model, exc.details() or "")
            raise Unavailable(f"llm unavailable: {exc.code().name}") from exc
        finally:
            call.cancel()

    async def ready(self, model: str, version: str = "") -> bool:
        try:
            return bool(await self._client.is_model_ready(model, version))
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self._channel.close()
        await self._client.close()
