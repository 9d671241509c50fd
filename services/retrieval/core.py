"""Retrieval's domain: chunk, embed, store and search documents, one tenant at a time.

Knows nothing of gRPC. Writes of one tenant are serialized, and every write bumps that
tenant's corpus version, so a version names exactly one state of the corpus.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from services.common.errors import InvalidArgument, NotFound
from services.common.validation import (
    check_document_id,
    check_range,
    check_string_map,
    check_tenant,
)
from services.retrieval.chunking import chunk_text
from services.retrieval.config import RetrievalConfig
from services.retrieval.embedder import TritonEmbedder
from services.retrieval.store import MilvusStore, StoredChunk

LOGGER = logging.getLogger(__name__)
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


class RetrievalCore:
    def __init__(self, config: RetrievalConfig, store: MilvusStore, embedder: TritonEmbedder):
        self._config = config
        self._store = store
        self._embedder = embedder
        # Milvus Lite is not thread-safe: one worker thread owns every store call.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus")
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

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
        async with self._locks[tenant]:
            version = await self._run(self._store.version, tenant) + 1
            offset = 0
            for document, chunks in zip(documents, chunked, strict=True):
                rows = vectors[offset : offset + len(chunks)]
                offset += len(chunks)
                await self._run(
                    self._store.replace_document,
                    tenant,
                    document.id,
                    document.title,
                    document.metadata,
                    chunks,
                    rows,
                    version,
                )
            await self._run(self._store.set_version, tenant, version)
        LOGGER.info("upserted %d documents, %d chunks, version %d", len(ids), len(flat), version)
        return UpsertResult(documents=len(documents), chunks=len(flat), version=version)

    async def delete(self, tenant: str, document_id: str) -> int:
        check_tenant(tenant)
        check_document_id(document_id, "id")
        async with self._locks[tenant]:
            if not await self._run(self._store.delete_document, tenant, document_id):
                raise NotFound(f"id: no document {document_id!r}", field="id")
            version = await self._run(self._store.version, tenant) + 1
            await self._run(self._store.set_version, tenant, version)
        return version

    async def search(
        self, tenant: str, query: str, top_k: int, filters: dict[str, str], timeout_s: float
    ) -> tuple[list[StoredChunk], int]:
        check_tenant(tenant)
        if not query.strip():
            raise InvalidArgument("query: must not be empty", field="query")
        check_range(top_k, 1, MAX_TOP_K, "top_k")
        check_string_map(filters, "filters")
        vector = (await self._embedder.embed([query], timeout_s))[0]
        chunks = await self._run(self._store.search, tenant, vector, top_k, filters)
        return chunks, await self.version(tenant)

    async def version(self, tenant: str) -> int:
        return await self._run(self._store.version, check_tenant(tenant))

    async def close(self) -> None:
        await self._embedder.close()
        await self._run(self._store.close)
        self._executor.shutdown(wait=True)
