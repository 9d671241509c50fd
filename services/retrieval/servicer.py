"""The Retrieval gRPC service: protobuf in, domain call, protobuf out."""

from __future__ import annotations

import grpc
from ragmesh.retrieval.v1 import retrieval_pb2 as pb
from ragmesh.retrieval.v1 import retrieval_pb2_grpc

from services.contract.documents import from_message
from services.retrieval.core import RetrievalCore

DEFAULT_TIMEOUT_S = 30.0
MAX_PULL = 256


def _remaining(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    return DEFAULT_TIMEOUT_S if remaining is None else float(remaining)


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServicer):
    def __init__(self, core: RetrievalCore) -> None:
        self._core = core

    async def Upsert(
        self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertResponse:
        documents = [from_message(d) for d in request.documents]
        result = await self._core.upsert(request.tenant, documents, _remaining(context))
        return pb.UpsertResponse(
            documents=result.documents, chunks=result.chunks, corpus_version=str(result.version)
        )

    async def Delete(
        self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteResponse:
        version = await self._core.delete(request.tenant, request.document_id)
        return pb.DeleteResponse(deleted=True, corpus_version=str(version))

    async def Search(
        self, request: pb.SearchRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        chunks, version, vector = await self._core.search(
            request.tenant,
            request.query,
            request.top_k,
            dict(request.filters),
            _remaining(context),
            hybrid=request.hybrid if request.HasField("hybrid") else None,
        )
        return pb.SearchResponse(
            chunks=[
                pb.Chunk(
                    document_id=c.document_id,
                    chunk_id=f"{c.document_id}#{c.chunk_index}",
                    score=c.score,
                    text=c.text,
                    title=c.title,
                    metadata=c.metadata,
                    injection=c.injection,
                    page=c.page,
                    heading=c.heading,
                )
                for c in chunks
            ],
            corpus_version=str(version),
            query_vector=vector.astype("<f4").tobytes(),
        )

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        vectors, counts = await self._core.embed(list(request.input), _remaining(context))
        return pb.EmbedResponse(
            vectors=vectors.astype("<f4").tobytes(),
            dimensions=vectors.shape[1],
            tokens=counts,
            model=self._core.embedder_model,
        )

    async def GetCorpusVersion(
        self, request: pb.GetCorpusVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCorpusVersionResponse:
        version = await self._core.version(request.tenant)
        state = await self._core.replica_state()
        return pb.GetCorpusVersionResponse(
            corpus_version=str(version),
            region=state.region,
            applied_seq=state.applied,
            lag=max(state.lag, 0),
            lag_known=state.lag >= 0,
        )

    async def Pull(
        self, request: pb.PullRequest, context: grpc.aio.ServicerContext
    ) -> pb.PullResponse:
        limit = min(max(request.max_entries, 1), MAX_PULL)
        entries, head = await self._core.log_after(request.after_seq, limit)
        return pb.PullResponse(entries=entries, head_seq=head)
