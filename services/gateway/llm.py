"""Generation from a Triton LLM tier over the gRPC stream API.

Every tier takes the tensor names of TensorRT-LLM's `inflight_batcher_llm` ensemble
(`text_input`, `max_tokens`, `stream`, `temperature` -> `text_output`), so one client
serves the CPU models here and the TensorRT-LLM engines on GPU nodes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from services.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from services.common.triton_recovery import StubRecovery


@dataclass(frozen=True)
class Delta:
    """Text the model produced since the last delta; counts are running totals (or -1)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model_version: str


def _tensor(name: str, value: object, datatype: str, dtype: type) -> triton.InferInput:
    data: np.ndarray = np.array([[value]], dtype=dtype)
    tensor = triton.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def _count(result: triton.InferResult, name: str) -> int:
    value = result.as_numpy(name)
    return int(value.reshape(-1)[0]) if value is not None and value.size else -1


def _error(exc: InferenceServerException) -> Exception:
    message = exc.message() or str(exc)
    if "max_tokens" in message:
        return InvalidArgument(f"max_tokens: {message}", field="max_tokens")
    if message.startswith("text_input:"):
        detail = message.removeprefix("text_input:").strip()
        return InvalidArgument(f"query: the prompt does not fit the model: {detail}", field="query")
    if "Deadline" in str(exc.status()) or "deadline" in message.lower():
        return DeadlineExceeded("generation timed out")
    return Unavailable(f"llm unavailable: {message}")


class TritonLLM:
    """One Triton server's LLM models; a tier names the model (and maybe its version)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._client = triton.InferenceServerClient(target)
        self._recovery = StubRecovery(self._client)

    async def stream(
        self,
        model: str,
        version: str,
        prompt: str,
        *,
        max_tokens: int,
        temperature: float,
        timeout_s: float,
        headers: dict[str, str],
    ) -> AsyncIterator[Delta]:
        """Yields deltas until the model's final response; cancelling stops generation."""
        inputs = [
            _tensor("text_input", prompt.encode(), "BYTES", np.object_),
            _tensor("max_tokens", max_tokens, "INT32", np.int32),
            _tensor("stream", True, "BOOL", np.bool_),
            _tensor("temperature", temperature, "FP32", np.float32),
        ]

        async def one_request() -> AsyncIterator[dict[str, object]]:
            yield {
                "model_name": model,
                "model_version": version,
                "inputs": inputs,
                "request_id": uuid.uuid4().hex,
            }

        responses = self._client.stream_infer(
            one_request(), stream_timeout=max(timeout_s, 0.001), headers=headers
        )
        try:
            async for result, error in responses:
                if error is not None:
                    self._recovery.notice(model, error.message() or "")
                    raise _error(error)
                text = result.as_numpy("text_output")
                yield Delta(
                    text=b"".join(t for t in text.reshape(-1)).decode() if text is not None else "",
                    prompt_tokens=_count(result, "prompt_tokens"),
                    completion_tokens=_count(result, "completion_tokens"),
                    model_version=result.get_response().model_version,
                )
        except InferenceServerException as exc:
            self._recovery.notice(model, exc.message() or "")
            raise _error(exc) from exc
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded("generation timed out") from exc
            raise Unavailable(f"llm unavailable: {exc.code().name}") from exc
        finally:
            responses.cancel()

    async def ready(self, model: str, version: str = "") -> bool:
        try:
            return bool(await self._client.is_model_ready(model, version))
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self._client.close()
