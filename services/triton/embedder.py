"""Embeddings from Triton's `embedder` model over gRPC."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from services.common import telemetry
from services.common.errors import DeadlineExceeded, Unavailable
from services.triton.recovery import StubRecovery


class TritonEmbedder:
    def __init__(self, target: str, model: str, batch: int, dim: int) -> None:
        self._client = triton.InferenceServerClient(target)
        self._recovery = StubRecovery(self._client)
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
        data = np.array([[t.encode()] for t in texts], dtype=np.object_)
        tensor = triton.InferInput("text", list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        try:
            result = await self._client.infer(
                self._model,
                [tensor],
                outputs=[triton.InferRequestedOutput("embedding")],
                client_timeout=max(timeout_s, 0.001),
                headers=telemetry.triton_traceparent(),
            )
        except InferenceServerException as exc:
            self._recovery.notice(self._model, exc.message() or "")
            if "Deadline" in str(exc.status()):
                raise DeadlineExceeded("embedding timed out") from exc
            raise Unavailable(f"embedder unavailable: {exc.status()}") from exc
        vectors = result.as_numpy("embedding")
        if vectors is None or vectors.shape != (len(texts), self._dim):
            raise Unavailable("embedder returned an unexpected shape")
        return vectors.astype(np.float32, copy=False)

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self._model))
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self._client.close()
