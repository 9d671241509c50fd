"""Embeddings from Triton's `embedder` model: raw ModelInferRequests on a TritonClient's stub.

The model (triton_models/cpu/embedder/config.pbtxt) takes a batch of texts as `text`, a BYTES
tensor of shape [n, 1], and answers `embedding`, FP32 of shape [n, dim], unit-length rows.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from services.common import telemetry
from services.common.errors import Unavailable, from_status
from services.triton.client import TritonClient, encode_bytes
from services.triton.recovery import StubRecovery


def _request(model: str, texts: list[str]) -> Any:
    """The ModelInferRequest for one batch of texts."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="text", datatype="BYTES", shape=(len(texts), 1))
    request.outputs.add(name="embedding")
    request.raw_input_contents.append(encode_bytes(t.encode() for t in texts))
    return request


def _vectors(response: Any, count: int, dim: int) -> np.ndarray:
    """The response's `embedding` rows; Unavailable if it is not `count` FP32 rows of `dim`."""
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        if tensor.name == "embedding":
            shape, size = list(tensor.shape), count * dim * 4
            if tensor.datatype == "FP32" and shape == [count, dim] and len(raw) == size:
                return np.frombuffer(raw, dtype="<f4").reshape(count, dim)
            break
    raise Unavailable("embedder returned an unexpected shape")


class TritonEmbedder:
    """Embeds texts with `model` on `client`'s Triton; closing it closes the client."""

    def __init__(self, client: TritonClient, model: str, batch: int, dim: int) -> None:
        self._client = client
        self._recovery = StubRecovery(client)
        self._model = model
        self._batch = batch
        self._dim = dim

    async def embed(self, texts: list[str], timeout_s: float) -> np.ndarray:
        """Unit-length vectors, one row per text, in request batches of `batch`."""
        rows = [
            await self._embed_batch(texts[i : i + self._batch], timeout_s)
            for i in range(0, len(texts), self._batch)
        ]
        return np.concatenate(rows) if rows else np.zeros((0, self._dim), np.float32)

    async def _embed_batch(self, texts: list[str], timeout_s: float) -> np.ndarray:
        try:
            response = await self._client.stub.ModelInfer(
                _request(self._model, texts),
                timeout=max(timeout_s, 0.001),
                metadata=tuple(telemetry.triton_traceparent().items()),
            )
        except grpc.aio.AioRpcError as exc:
            self._recovery.notice(self._model, exc.details() or "")
            raise from_status(
                exc.code(), exc.details() or "", "embedder", timeout="embedding timed out"
            ) from exc
        return _vectors(response, len(texts), self._dim)

    async def close(self) -> None:
        await self._client.close()
