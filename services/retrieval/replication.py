"""A replica's half of corpus replication: pull the governance point's log and apply it.

The replica asks for the entries after the last one its own log holds, so a region that
was down catches up when it returns, from where it stopped. While the governance point is
unreachable the replica keeps serving queries from what it has, and reports its lag as
unknown until it hears from the governance point again. It is sent only entries whose fate
the governance point has decided (applied or rejected), and an entry it cannot apply yet
(its own Milvus down) stays in its log, retried each round; nothing ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from ragmesh.retrieval.v1 import retrieval_pb2 as pb
from ragmesh.retrieval.v1 import retrieval_pb2_grpc

from services.common.serving import new_channel
from services.retrieval.core import RetrievalCore

LOGGER = logging.getLogger(__name__)
BATCH = 64
PULL_TIMEOUT_S = 10.0


class Replicator:
    def __init__(self, core: RetrievalCore, primary_target: str, interval_s: float) -> None:
        self._core = core
        self._target = primary_target
        self._interval_s = interval_s
        self._channel = new_channel(primary_target)
        self._stub = retrieval_pb2_grpc.RetrievalStub(self._channel)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="replicator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._channel.close()

    async def pull_once(self) -> int:
        """Pulls and applies one batch; returns how many entries it applied."""
        after = await self._core.log_head()
        reply = await self._stub.Pull(
            pb.PullRequest(after_seq=after, max_entries=BATCH), timeout=PULL_TIMEOUT_S
        )
        await self._core.replicate(list(reply.entries), reply.head_seq)
        return len(reply.entries)

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                pulled = await self.pull_once()
                if failing:
                    LOGGER.info("replication from %s resumed", self._target)
                failing = False
            except grpc.aio.AioRpcError as exc:
                if not failing:
                    LOGGER.warning("replication from %s failed: %s", self._target, exc.code().name)
                failing, pulled = True, 0
            except Exception:  # applying failed: the entries stay logged, retried next round
                if not failing:
                    LOGGER.exception("replication from %s: applying failed", self._target)
                failing, pulled = True, 0
            if pulled < BATCH:
                await asyncio.sleep(self._interval_s)
