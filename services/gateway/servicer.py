"""The public Gateway gRPC service: protobuf in, domain call, protobuf out.

A stream always ends with a `final` event or an `error` event (and its status), whatever
ends it: the answer, a failure after the first token, the request's deadline (the gateway
stops its own work CLOSE_MARGIN_S before the client's, to have time to say so), or the
gateway shutting down (open streams get the drain's grace, less that margin).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from typing import TypeVar

import grpc
from google.protobuf import empty_pb2, json_format
from ragmesh.v1 import admin_pb2, gateway_pb2_grpc
from ragmesh.v1 import gateway_pb2 as pb

from services.common.errors import (
    FailedPrecondition,
    NotFound,
    RagmeshError,
    Unavailable,
    rpc_status,
)
from services.contract.documents import from_message
from services.contract.prompt import Turn
from services.control.usage import check_query
from services.gateway.control import Control
from services.gateway.core import GatewayCore
from services.gateway.values import BYPASS, HIT, MISS, Answer, Call, GenerateParams

# The time a call keeps before its client's deadline to send how it ended: at most this,
# and at most a tenth of the call's time.
CLOSE_MARGIN_S = 0.25

T = TypeVar("T")

_CACHE_STATUS = {
    HIT: pb.CACHE_STATUS_HIT,
    MISS: pb.CACHE_STATUS_MISS,
    BYPASS: pb.CACHE_STATUS_BYPASS,
}


def _final(answer: Answer, call: Call, region: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        answer=answer.text,
        citations=[
            pb.Citation(
                index=c.index,
                document_id=c.document_id,
                chunk_id=c.chunk_id,
                score=c.score,
                snippet=c.snippet,
                page=c.page,
                heading=c.heading,
            )
            for c in answer.citations
        ],
        usage=pb.Usage(
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            cost_usd=answer.cost_usd,
        ),
        routing=pb.Routing(
            tier=answer.routing.tier, reason=answer.routing.reason, detail=answer.routing.detail
        )
        if answer.routing
        else None,
        model=answer.model,
        tier=answer.tier,
        region=region,
        cache_status=_CACHE_STATUS[answer.cache_status],
        degraded=answer.degraded,
        degraded_reason=answer.degraded_reason,
        trace_id=call.trace_id,
        cache_match=pb.CacheMatch(
            kind=answer.cache_match.kind,
            similarity=answer.cache_match.similarity,
            trace_id=answer.cache_match.trace_id,
        )
        if answer.cache_match
        else None,
        corpus_version=answer.corpus_version,
        finish_reason=answer.finish_reason,
        guardrails=[pb.Guardrail(**dataclasses.asdict(g)) for g in answer.guardrails],
        continuations=[pb.Continuation(**dataclasses.asdict(c)) for c in answer.continuations],
    )


async def _until(events: AsyncGenerator[T], closing: asyncio.Event) -> AsyncGenerator[T]:
    """`events`, until `closing` is set: then Unavailable (the gateway is shutting down), the
    generation behind them stopped. Waits on both at once, so that a shutdown never lands in
    the middle of gRPC's write of an event."""
    stop = asyncio.ensure_future(closing.wait())
    step: asyncio.Future[T] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(events))
            await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                raise Unavailable("the gateway is shutting down: ask again")
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        stop.cancel()
        if step is not None and not step.done():  # shutdown, or the client went away
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await step
        await events.aclose()


def _params(request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> GenerateParams:
    priority = request.priority or next(
        (str(v) for k, v in context.invocation_metadata() or () if k == "x-priority"), ""
    )
    return GenerateParams(
        priority=priority.strip(),
        query=request.query,
        top_k=request.top_k,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p or 1.0,
        stop=tuple(request.stop),
        seed=request.seed if request.HasField("seed") else None,
        user=request.user,
        history=tuple(Turn(t.role, t.content) for t in request.history),
        filters=dict(request.filters),
        tier=request.tier,
        model_version=request.model_version,
        bypass_cache=request.bypass_cache,
        skip_retrieval=request.skip_retrieval,
        json_schema=json_format.MessageToDict(request.json_schema)
        if request.HasField("json_schema")
        else None,
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, core: GatewayCore, control: Control) -> None:
        self._core = core
        self._control = control
        self._closing = asyncio.Event()  # set at shutdown, once open streams had their grace
        self._open = 0  # streams open now
        self._idle = asyncio.Event()  # set while none is
        self._idle.set()

    def _call(self, context: grpc.aio.ServicerContext, budget: float | None = None) -> Call:
        return self.call(context.invocation_metadata() or (), context.time_remaining(), budget)

    def call(
        self,
        metadata: Iterable[tuple[str, str | bytes]],
        remaining: float | None,
        budget: float | None = None,
    ) -> Call:
        """The request's tenant (its key, in `metadata`) and budget: the client's `remaining`
        seconds (None: no deadline), at most `budget` (the gateway's request_timeout_s unless
        given), less the closing margin. Raises Unauthenticated, PermissionDenied."""
        key = self._control.authenticate(metadata)
        budget = self._core.config.request_timeout_s if budget is None else budget
        if remaining is not None:
            budget = min(budget, remaining - min(CLOSE_MARGIN_S, remaining / 10))
        return Call.start(key.tenant, budget, key)

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """A call the drain waits for (close_streams): every stream, and every call of the
        OpenAI API, whose server has no drain of its own."""
        self._open += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._open -= 1
            if not self._open:
                self._idle.set()

    async def streamed(self, events: AsyncGenerator[T]) -> AsyncGenerator[T]:
        """`events` as an open stream (of either API): in flight, and ended with Unavailable
        when the gateway shuts down (close_streams)."""
        with self.in_flight():
            async with contextlib.aclosing(_until(events, self._closing)) as until:
                async for event in until:
                    yield event

    async def close_streams(self, grace_s: float) -> None:
        """At shutdown: open streams may end on their own within `grace_s`, less the margin
        (this returns as soon as none is open); then each still open ends with an UNAVAILABLE
        error event (ask again elsewhere)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(grace_s - CLOSE_MARGIN_S, 0.0))
        self._closing.set()  # a stream that starts from now on ends at once

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        call = self._call(context)
        # Closed here, not by the garbage collector on another turn of the loop.
        answer = self._core.generate(call, _params(request, context), stream=False)
        async with contextlib.aclosing(answer) as events:
            async for event in events:
                if isinstance(event, Answer):
                    return _final(event, call, self._core.config.region)
        raise RuntimeError("generation ended without an answer")

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        call = self._call(context)
        streamed = False
        events = self.streamed(self._core.generate(call, _params(request, context)))
        try:
            async for event in events:
                if isinstance(event, Answer):
                    final = _final(event, call, self._core.config.region)
                    final.ClearField("answer")  # the tokens already carried it
                    yield pb.GenerateStreamResponse(final=final)
                else:
                    streamed = True
                    yield pb.GenerateStreamResponse(token=event)
        except RagmeshError as error:
            if streamed:  # else the status alone says it, and Envoy may still retry
                yield pb.GenerateStreamResponse(error=rpc_status(error))
            raise
        finally:
            await events.aclose()

    async def IngestDocuments(
        self, request: pb.IngestDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestDocumentsResponse:
        documents = [from_message(d) for d in request.documents]
        call = self._call(context, self._core.config.write_timeout_s)
        result = await self._core.ingest(call, documents)
        return pb.IngestDocumentsResponse(
            documents=result.documents, chunks=result.chunks, corpus_version=result.corpus_version
        )

    async def DeleteDocument(
        self, request: pb.DeleteDocumentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteDocumentResponse:
        call = self._call(context, self._core.config.write_timeout_s)
        result = await self._core.delete(call, request.id)
        return pb.DeleteDocumentResponse(
            deleted=result.deleted, corpus_version=result.corpus_version
        )

    async def Search(
        self, request: pb.SearchRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        found = await self._core.search(
            self._call(context), request.query, request.top_k, dict(request.filters)
        )
        return pb.SearchResponse(
            hits=[pb.SearchHit(**dataclasses.asdict(c)) for c in found.chunks],
            corpus_version=found.corpus_version,
        )

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        embedded = await self._core.embed(self._call(context), list(request.input))
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=row.tolist()) for row in embedded.vectors],
            model=embedded.model,
            prompt_tokens=sum(embedded.tokens),
        )

    async def GetStatus(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        call = self._call(context)
        status = await self._core.status(call)
        return pb.StatusResponse(
            region=self._core.config.region,
            tenant=call.tenant,
            corpus_version=status.corpus_version,
            corpus_region=status.corpus_region,
            corpus_lag=status.corpus_lag,
            dependencies=[
                pb.DependencyStatus(
                    name=d.name,
                    target=d.target,
                    healthy=d.healthy,
                    detail=d.detail,
                    breaker=d.breaker,
                )
                for d in status.dependencies
            ],
        )

    async def GetUsage(
        self, request: admin_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.UsageResponse:
        """The caller's own tenant's usage: `tenant` must be empty or the key's own."""
        call = self._call(context)
        if not self._control.config.enabled:
            raise FailedPrecondition("the control plane is off: no usage is recorded")
        if request.tenant and request.tenant != call.tenant:
            raise NotFound(f"tenant: no tenant {request.tenant[:64]!r}", field="tenant")
        start, end, group_by = _usage_range(request)
        check_query(start, end, group_by)  # a bad read costs nothing
        await self._control.admit_call(call)  # a read of the shared store: a request too
        return await usage_response(self._control, call.tenant, request)


async def usage_response(
    control: Control, tenant: str, request: admin_pb2.GetUsageRequest
) -> admin_pb2.UsageResponse:
    """A GetUsage answer for `tenant` (the admin API's and the public one's)."""
    rows = await control.usage.query(tenant, *_usage_range(request))
    return admin_pb2.UsageResponse(
        tenant=tenant,
        rows=[
            admin_pb2.UsageRow(
                group=r.group,
                requests=r.requests,
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
                cost_usd=r.cost_usd,
            )
            for r in rows
        ],
    )


def _usage_range(request: admin_pb2.GetUsageRequest) -> tuple[int, int, str]:
    """(start ms, end ms, grouping): end 0 is now, start 0 thirty days before it."""
    end = request.end_ms or int(time.time() * 1000)
    start = request.start_ms or end - 30 * 86_400_000
    return start, end, request.group_by or "day"
