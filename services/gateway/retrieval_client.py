"""The gateway's client of the retrieval plane: plain values in and out, its failures mapped
to the gateway's errors (the caller's own mistakes keep their status)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
from ragmesh.retrieval.v1 import retrieval_pb2 as pb
from ragmesh.retrieval.v1 import retrieval_pb2_grpc

from services.common import telemetry
from services.common.errors import from_status
from services.common.serving import DEGRADABLE, new_channel
from services.contract.documents import Document

R = TypeVar("R")

# Failures of the caller's own input keep their status; anything else is the plane's fault.
_PASSED_THROUGH = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


@dataclass(frozen=True)
class Chunk:
    """A retrieved chunk; `score` is the cosine similarity to the query (-1..1);
    `injection` the rule the ingest scan found the chunk's text to match, "" for clean;
    `page` the PDF page it is on (0: none), `heading` its heading path ("": none)."""

    document_id: str
    chunk_id: str  # "<document_id>#<index>"
    score: float
    text: str
    title: str
    metadata: dict[str, str]
    page: int = 0
    heading: str = ""
    injection: str = ""


@dataclass(frozen=True)
class Found:
    chunks: list[Chunk]  # best first
    corpus_version: str
    # The query's embedding (float32, unit length), for the semantic cache; None: unknown.
    query_vector: np.ndarray | None = None


@dataclass(frozen=True)
class Written:
    documents: int
    chunks: int
    corpus_version: str


@dataclass(frozen=True)
class Deleted:
    deleted: bool
    corpus_version: str


@dataclass(frozen=True)
class Embedded:
    """Vectors (float32, [texts, dimensions], unit length) and each text's tokens."""

    vectors: np.ndarray
    tokens: list[int]
    model: str


@dataclass(frozen=True)
class CorpusState:
    """A tenant's corpus version at the replica that answered, its region, and how many log
    entries that replica is behind the governance point (-1: not known)."""

    corpus_version: str
    region: str
    lag: int


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
            raise from_status(
                exc.code(),
                exc.details() or "",
                "retrieval",
                passed=_PASSED_THROUGH,
                trailers=exc.trailing_metadata(),
            ) from exc

    async def upsert(self, tenant: str, documents: list[Document], timeout_s: float) -> Written:
        request = pb.UpsertRequest(
            tenant=tenant,
            documents=[
                pb.Document(
                    id=d.id,
                    title=d.title,
                    text=d.text,
                    metadata=d.metadata,
                    content=d.content,
                    media_type=d.media_type,
                )
                for d in documents
            ],
        )
        reply = await self._call(self._stub.Upsert, request, timeout_s)
        return Written(reply.documents, reply.chunks, reply.corpus_version)

    async def delete(self, tenant: str, document_id: str, timeout_s: float) -> Deleted:
        request = pb.DeleteRequest(tenant=tenant, document_id=document_id)
        reply = await self._call(self._stub.Delete, request, timeout_s)
        return Deleted(reply.deleted, reply.corpus_version)

    async def search(
        self,
        tenant: str,
        query: str,
        top_k: int,
        filters: dict[str, str],
        timeout_s: float,
        *,
        degradable: bool = False,
    ) -> Found:
        """`degradable`: the caller answers without it (Envoy gives each region half)."""
        request = pb.SearchRequest(tenant=tenant, query=query, top_k=top_k, filters=filters)
        extra = (DEGRADABLE,) if degradable else ()
        reply = await self._call(self._stub.Search, request, timeout_s, extra)
        chunks = [
            Chunk(
                c.document_id,
                c.chunk_id,
                c.score,
                c.text,
                c.title,
                dict(c.metadata),
                c.page,
                c.heading,
                c.injection,
            )
            for c in reply.chunks
        ]
        vector = np.frombuffer(reply.query_vector, "<f4") if reply.query_vector else None
        return Found(chunks, reply.corpus_version, vector)

    async def embed(self, texts: list[str], timeout_s: float) -> Embedded:
        """The embedder's vectors for `texts`, as searches use them (no tenant's data)."""
        reply = await self._call(self._stub.Embed, pb.EmbedRequest(input=texts), timeout_s)
        vectors = np.frombuffer(reply.vectors, dtype="<f4").reshape(-1, reply.dimensions)
        return Embedded(vectors, list(reply.tokens), reply.model)

    async def version(self, tenant: str, timeout_s: float) -> CorpusState:
        request = pb.GetCorpusVersionRequest(tenant=tenant)
        reply = await self._call(self._stub.GetCorpusVersion, request, timeout_s)
        return CorpusState(reply.corpus_version, reply.region, reply.lag if reply.lag_known else -1)

    async def close(self) -> None:
        await self._channel.close()
