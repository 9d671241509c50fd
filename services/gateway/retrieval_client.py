"""The gateway's client of the retrieval plane; maps its failures to gateway errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from ragmesh.retrieval.v1 import retrieval_pb2 as pb
from ragmesh.retrieval.v1 import retrieval_pb2_grpc

from services.common import telemetry
from services.common.errors import from_status
from services.common.serving import DEGRADABLE, new_channel

R = TypeVar("R")

# Failures of the caller's own input keep their status; anything else is the plane's fault.
_PASSED_THROUGH = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


class RetrievalClient:
    def __init__(self, target: str) -> None:
        self._channel = new_channel(target)
        self._stub = retrieval_pb2_grpc.RetrievalStub(self._channel)

    async def _call(
        self,
        method: Callable[..., Awaitable[R]],
        request: object,
        timeout_s: float,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> R:
        try:
            # The call carries the trace: retrieval's span is a child of the current one.
            metadata = (*telemetry.traceparent().items(), *extra)
            return await method(request, timeout=max(timeout_s, 0.001), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            raise from_status(exc.code(), details, "retrieval", passed=_PASSED_THROUGH) from exc

    async def upsert(self, request: pb.UpsertRequest, timeout_s: float) -> pb.UpsertResponse:
        return await self._call(self._stub.Upsert, request, timeout_s)

    async def delete(self, request: pb.DeleteRequest, timeout_s: float) -> pb.DeleteResponse:
        return await self._call(self._stub.Delete, request, timeout_s)

    async def search(
        self, request: pb.SearchRequest, timeout_s: float, *, degradable: bool = False
    ) -> pb.SearchResponse:
        extra = (DEGRADABLE,) if degradable else ()
        return await self._call(self._stub.Search, request, timeout_s, extra)

    async def version(self, tenant: str, timeout_s: float) -> pb.GetCorpusVersionResponse:
        """The tenant's corpus version at the replica that answers, with its region and lag."""
        return await self._call(
            self._stub.GetCorpusVersion,
            pb.GetCorpusVersionRequest(tenant=tenant),
            timeout_s,
        )

    async def close(self) -> None:
        await self._channel.close()
