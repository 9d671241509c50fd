"""Brings a Triton python-backend model back after its stub process died.

Triton 2.51 answers every request to such a model with "Stub process ... is not healthy"
(fast, so callers see UNAVAILABLE, never a hang) but does not restart the stub, and still
reports the model ready. Loading it again is a no-op while Triton thinks it is loaded, so
recovery unloads it, waits until it is gone, and loads it: a new stub in about 1.5 s.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from services.triton.client import TritonClient

LOGGER = logging.getLogger(__name__)
MIN_INTERVAL_S = 10.0
UNLOAD_TIMEOUT_S = 30.0


def stub_died(message: str) -> bool:
    return "Stub process" in message and "is not healthy" in message


class StubRecovery:
    """Reloads a model whose stub died, at most once every MIN_INTERVAL_S per model."""

    def __init__(self, client: TritonClient) -> None:
        self._client = client
        self._last: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def notice(self, model: str, message: str) -> None:
        if not stub_died(message):
            return
        now = time.monotonic()
        if now - self._last.get(model, -MIN_INTERVAL_S) < MIN_INTERVAL_S:
            return
        self._last[model] = now
        task = asyncio.get_running_loop().create_task(self._reload(model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self, model: str) -> None:
        LOGGER.warning("model %s lost its stub process: reloading it", model)
        try:
            await self._client.unload(model)
            deadline = time.monotonic() + UNLOAD_TIMEOUT_S
            while await self._client.ready(model) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await self._client.load(model)
            LOGGER.info("model %s reloaded", model)
        except grpc.aio.AioRpcError as exc:
            LOGGER.error("reloading model %s failed: %s", model, exc.details())
