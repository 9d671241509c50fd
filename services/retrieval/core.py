"""Retrieval's domain: chunk, embed, store and search documents, one tenant at a time.

Knows nothing of gRPC. Every write bumps its tenant's corpus version, so a version names
exactly one state of the corpus. Writes are taken only at the governance point: they go to
the corpus log first (durable), then to Milvus, then are acknowledged. A replica applies
the governance point's log entries in order (services/retrieval/replication.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from opentelemetry import trace
from ragmesh.retrieval.v1 import retrieval_pb2 as pb

from services.common import telemetry
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.validation import (
    check_document_id,
    check_range,
    check_string_map,
    check_tenant,
)
from services.retrieval.chunking import chunk_text
from services.retrieval.config import RetrievalConfig
from services.retrieval.corpus_log import CorpusLog
from services.retrieval.embedder import TritonEmbedder
from services.retrieval.hot_store import HotStore
from services.retrieval.store import MilvusStore, StoredChunk

LOGGER = logging.getLogger(__name__)
_TRACER = trace.get_tracer("ragmesh.retrieval")
T = TypeVar("T")

MAX_TOP_K = 100
MAX_CHUNK_BYTES = 60_000  # below Milvus's 65,535-byte VARCHAR limit


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UpsertResult:
    documents: int
    chunks: int
    version: int


@dataclass(frozen=True)
class ReplicaState:
    region: str
    applied: int
    lag: int  # log entries behind the governance point; -1 while unknown


def _upsert_entry(
    tenant: str, version: int, document: Document, chunks: list[str], vectors: np.ndarray
) -> pb.LogEntry:
    stored = pb.StoredDocument(
        id=document.id,
        title=document.title,
        metadata=document.metadata,
        chunks=chunks,
        vectors=np.ascontiguousarray(vectors, dtype=np.float32).tobytes(),
    )
    return pb.LogEntry(tenant=tenant, version=version, upsert=stored)


def _retrieval_attributes(
    tenant: str, query: str, top_k: int, chunks: list[StoredChunk], version: int
) -> dict[str, str | int | float]:
    """OpenInference's retriever attributes (Phoenix, Langfuse) and ours; hashes, no text."""
    found: dict[str, str | int | float] = {
        "openinference.span.kind": "RETRIEVER",
        "ragmesh.tenant": telemetry.digest(tenant),
        "ragmesh.query_hash": telemetry.digest(query),
        "ragmesh.retrieval.k": top_k,
        "ragmesh.retrieval.hits": len(chunks),
        "ragmesh.retrieval.top_score": max((c.score for c in chunks), default=0.0),
        "ragmesh.corpus_version": str(version),
    }
    for i, c in enumerate(chunks):
        found[f"retrieval.documents.{i}.document.id"] = c.document_id
        found[f"retrieval.documents.{i}.document.score"] = c.score
    return found


class RetrievalCore:
    def __init__(
        self,
        config: RetrievalConfig,
        store: MilvusStore,
        embedder: TritonEmbedder,
        log: CorpusLog,
    ):
        self._config = config
        # Milvus stays the store of record; the hot index, loaded in `recover`, serves search.
        self._hot = HotStore(store, config.embedding_dim) if config.hot_index else None
        self._store: MilvusStore | HotStore = self._hot or store
        self._embedder = embedder
        self._log = log
        # Milvus Lite and the log are not thread-safe: one worker thread owns every call.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._write_lock = asyncio.Lock()
        self.primary_head = -1  # the governance point's last entry, as last heard; -1: never

    @property
    def is_primary(self) -> bool:
        return not self._config.primary_target

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def chunk(self, document: Document, index: int) -> list[str]:
        chunks = chunk_text(document.text, self._config.chunk_words, self._config.overlap_words)
        if not chunks:
            field_name = f"documents[{index}].text"
            raise InvalidArgument(f"{field_name}: must contain text", field=field_name)
        if any(len(c.encode()) > MAX_CHUNK_BYTES for c in chunks):
            field_name = f"documents[{index}].text"
            raise InvalidArgument(f"{field_name}: has a run of text without spaces too long")
        return chunks

    async def upsert(
        self, tenant: str, documents: list[Document], timeout_s: float
    ) -> UpsertResult:
        """Stores every document whole; invalid input writes nothing."""
        check_tenant(tenant)
        self._require_primary()
        if not documents:
            raise InvalidArgument("documents: must not be empty", field="documents")
        ids = [check_document_id(d.id, f"documents[{i}].id") for i, d in enumerate(documents)]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("documents: ids must be unique in one request", field="documents")
        for i, d in enumerate(documents):
            check_string_map(d.metadata, f"documents[{i}].metadata")
        chunked = [self.chunk(d, i) for i, d in enumerate(documents)]
        # The title is embedded with each chunk: it often names what the chunk is about.
        flat = [
            f"{d.title}\n{c}" if d.title else c
            for d, chunks in zip(documents, chunked, strict=True)
            for c in chunks
        ]
        vectors = await self._embedder.embed(flat, timeout_s)
        entries = []
        offset = 0
        for document, chunks in zip(documents, chunked, strict=True):
            rows = vectors[offset : offset + len(chunks)]
            offset += len(chunks)
            entries.append(_upsert_entry(tenant, 0, document, chunks, rows))
        async with self._write_lock:
            version = await self._run(self._write, tenant, entries)
        LOGGER.info("upserted %d documents, %d chunks, version %d", len(ids), len(flat), version)
        return UpsertResult(documents=len(documents), chunks=len(flat), version=version)

    async def delete(self, tenant: str, document_id: str) -> int:
        check_tenant(tenant)
        check_document_id(document_id, "id")
        self._require_primary()
        entry = pb.LogEntry(tenant=tenant, delete_document_id=document_id)
        async with self._write_lock:
            if not await self._run(self._store.has_document, tenant, document_id):
                raise NotFound(f"id: no document {document_id!r}", field="id")
            return await self._run(self._write, tenant, [entry])

    def _require_primary(self) -> None:
        if not self.is_primary:
            raise FailedPrecondition(
                f"retrieval in region {self._config.region} is a replica; writes go to the "
                f"governance point ({self._config.primary_target})"
            )

    def _write(self, tenant: str, entries: list[pb.LogEntry]) -> int:
        """Logs `entries` as the tenant's next version (one transaction), then applies them."""
        version = self._log.version(tenant) + 1
        for entry in entries:
            entry.version = version
        self._log.append(entries)
        self._apply_pending()
        return version

    def _apply_pending(self) -> int:
        """Applies every logged entry not yet applied, in order; returns how many."""
        applied, count = self._log.applied(), 0
        while entries := self._log.after(applied, 256):
            for entry in entries:
                self._apply(entry)
            applied = entries[-1].seq
            self._log.set_applied(applied)
            count += len(entries)
        return count

    def _apply(self, entry: pb.LogEntry) -> None:
        """Makes Milvus hold `entry`'s change; applying it twice changes nothing."""
        if entry.HasField("upsert"):
            d = entry.upsert
            vectors = np.frombuffer(d.vectors, dtype=np.float32).reshape(len(d.chunks), -1)
            self._store.replace_document(
                entry.tenant,
                d.id,
                d.title,
                dict(d.metadata),
                list(d.chunks),
                vectors,
                entry.version,
            )
        else:
            self._store.delete_document(entry.tenant, entry.delete_document_id)
        self._store.set_version(entry.tenant, entry.version)

    async def recover(self) -> int:
        """At start: loads the hot index, then applies what was logged but not applied."""
        async with self._write_lock:
            if self._hot is not None:
                await self._run(self._hot.load)
            count = await self._run(self._apply_pending)
        if count:
            LOGGER.info("recovered %d logged writes", count)
        return count

    async def replicate(self, entries: list[pb.LogEntry], head: int) -> None:
        """A replica: stores the governance point's entries in its own log, then applies them."""
        async with self._write_lock:
            if entries:
                await self._run(self._log.copy, entries)
                await self._run(self._apply_pending)
            self.primary_head = head

    async def log_after(self, seq: int, limit: int) -> tuple[list[pb.LogEntry], int]:
        """The governance point's entries after `seq`, and its head."""
        self._require_primary()
        entries = await self._run(self._log.after, seq, limit)
        return entries, await self._run(self._log.head)

    async def log_head(self) -> int:
        return await self._run(self._log.head)

    async def replica_state(self) -> ReplicaState:
        applied = await self._run(self._log.applied)
        if self.is_primary:
            lag = 0
        else:
            lag = max(self.primary_head - applied, 0) if self.primary_head >= 0 else -1
        return ReplicaState(region=self._config.region, applied=applied, lag=lag)

    async def search(
        self, tenant: str, query: str, top_k: int, filters: dict[str, str], timeout_s: float
    ) -> tuple[list[StoredChunk], int]:
        check_tenant(tenant)
        if not query.strip():
            raise InvalidArgument("query: must not be empty", field="query")
        check_range(top_k, 1, MAX_TOP_K, "top_k")
        check_string_map(filters, "filters")
        with _TRACER.start_as_current_span("retrieve") as span:
            vector = (await self._embedder.embed([query], timeout_s))[0]
            chunks = await self._run(self._store.search, tenant, vector, top_k, filters)
            version = await self.version(tenant)
            if span.is_recording():
                span.set_attributes(_retrieval_attributes(tenant, query, top_k, chunks, version))
        return chunks, version

    async def version(self, tenant: str) -> int:
        return await self._run(self._store.version, check_tenant(tenant))

    async def close(self) -> None:
        await self._embedder.close()
        await self._run(self._store.close)
        await self._run(self._log.close)
        self._executor.shutdown(wait=True)
