"""Retrieval's domain: chunk, embed, store and search documents, one tenant at a time.

Knows nothing of gRPC. Every write bumps its tenant's corpus version, so a version names
exactly one state of the corpus. Writes are taken only at the governance point: they go to
the corpus log first (durable), then to Milvus, then are acknowledged. A replica applies
the governance point's log entries in order (services/retrieval/replication.py). Each chunk
is scanned for injected instructions where it is cut, and the log carries the verdicts
with the chunks (services/retrieval/verdicts.py).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from opentelemetry import trace
from ragmesh.retrieval.v1 import retrieval_pb2 as pb

from services.common import telemetry
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.serving import MAX_MESSAGE_BYTES
from services.common.validation import (
    check_document_id,
    check_range,
    check_string_map,
    check_tenant,
)
from services.config.retrieval import RetrievalConfig
from services.contract.documents import MAX_EMBED_INPUTS, Document
from services.retrieval import hot_snapshot, metrics, parsing, verdicts
from services.retrieval.chunking import Chunker
from services.retrieval.corpus_log import CorpusLog
from services.retrieval.hot_store import HotStore
from services.retrieval.parsing import Section, Unreadable
from services.retrieval.store import (
    DocumentRows,
    MilvusStore,
    StoredChunk,
    VectorStore,
    row_metadata,
)
from services.triton.embedder import TritonEmbedder

LOGGER = logging.getLogger(__name__)
_TRACER = trace.get_tracer("ragmesh.retrieval")
T = TypeVar("T")

MAX_TOP_K = 100
# Documents in one write: its entries are applied in one store call, within one log page.
MAX_DOCUMENTS = 100
LOG_PAGE = 256
# A replica's pull reply holds at most this much of the log (but always one entry), and one
# entry at most MAX_ENTRY_BYTES (a document's chunks with their vectors, about 1.5 KiB of
# vector a chunk): both under the gRPC message limit, with room to spare.
PULL_MAX_BYTES = MAX_MESSAGE_BYTES // 4
MAX_ENTRY_BYTES = MAX_MESSAGE_BYTES // 4
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class UpsertResult:
    documents: int
    chunks: int
    version: int


@dataclass(frozen=True)
class Chunked:
    """A document's title (its own, else the one its content names) and chunks, with each
    chunk's injection verdict (a rule's name, "" for clean), page and heading path."""

    title: str
    texts: list[str]
    injections: list[str]
    pages: list[int]
    headings: list[str]


@dataclass(frozen=True)
class ReplicaState:
    region: str
    applied: int
    lag: int  # log entries behind the governance point; -1 while unknown


def _upsert_entry(
    tenant: str, version: int, document: Document, chunked: Chunked, vectors: np.ndarray
) -> pb.LogEntry:
    stored = pb.StoredDocument(
        id=document.id,
        title=chunked.title,
        metadata=document.metadata,
        chunks=chunked.texts,
        vectors=np.ascontiguousarray(vectors, dtype=np.float32).tobytes(),
        injections=chunked.injections,
        pages=chunked.pages if any(chunked.pages) else [],
        headings=chunked.headings if any(chunked.headings) else [],
    )
    return pb.LogEntry(tenant=tenant, version=version, upsert=stored)


def _rows(document: pb.StoredDocument) -> DocumentRows:
    """A logged document as the store takes it (an entry logged without verdicts is scanned
    there); raises ValueError for vectors or verdicts that do not make one row per chunk."""
    vectors = np.frombuffer(document.vectors, dtype=np.float32)
    return DocumentRows(
        document.id,
        document.title,
        dict(document.metadata),
        list(document.chunks),
        vectors.reshape(len(document.chunks), -1),
        list(document.injections),
        list(document.pages),
        list(document.headings),
    )


def _sections(document: Document) -> tuple[str, list[Section]]:
    """The document's title and the sections of its text: its `text` whole, or its
    `content` parsed (the title the content names where it has none of its own, else its
    id: `ragmesh ingest` makes that the file's name). Raises Unreadable naming the field at
    fault."""
    if not document.content and not document.media_type:
        return document.title, [Section(document.text)]
    if document.content and document.text:
        raise Unreadable("holds text and content: send one of them")
    if document.text:
        raise Unreadable("is the type of `content`; `text` is plain text", "media_type")
    if not document.media_type:
        raise Unreadable("is required with content", "media_type")
    parsed = parsing.parse(document.content, document.media_type)
    # Text past a write entry's size could never be stored: refused here, before seconds of
    # chunking (20 MiB of content may hold that much text, a DOCX 64 MiB inflated).
    size = sum(len(s.text.encode("utf-8")) for s in parsed.sections)
    if size > MAX_ENTRY_BYTES:
        raise Unreadable(f"holds {size:,} bytes of text, over a write's {MAX_ENTRY_BYTES:,}")
    return document.title or parsed.title or document.id, parsed.sections


def _given(document: Document, field: str) -> str:
    """The field the caller gave for one the store names: `content` for `text` where the
    text came from content."""
    return "content" if field == "text" and document.content else field


def _refuse(index: int, problem: tuple[str, str] | None) -> None:
    """InvalidArgument naming `documents[index].<field>`, for a problem the store would have."""
    if problem is not None:
        name = f"documents[{index}].{problem[0]}"
        raise InvalidArgument(f"{name}: {problem[1]}", field=name)


def _retrieval_attributes(
    tenant: str, query: str, top_k: int, chunks: list[StoredChunk], version: int, hybrid: bool
) -> dict[str, str | int | float]:
    """OpenInference's retriever attributes (Phoenix, Langfuse) and ours; hashes, no text."""
    found: dict[str, str | int | float] = {
        "openinference.span.kind": "RETRIEVER",
        "ragmesh.tenant": telemetry.digest(tenant),
        "ragmesh.query_hash": telemetry.digest(query),
        "ragmesh.retrieval.k": top_k,
        "ragmesh.retrieval.hybrid": hybrid,
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
        self.embedder_model = config.embedder_model  # Triton's name, shown to callers
        self._chunker = Chunker.from_config(config)  # loads the embedder's tokenizer
        # Milvus stays the store of record; the hot index, loaded in `recover`, serves search.
        snapshot = Path(config.hot_snapshot) if config.hot_snapshot else None
        self._hot = HotStore(store, config.embedding_dim, snapshot) if config.hot_index else None
        self._store: VectorStore = self._hot or store
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

    def chunk(self, document: Document) -> Chunked:
        """The document's chunks, each within `chunk_tokens` of the embedder's tokens and
        `chunk_chars` characters (services/retrieval/chunking.py), with each chunk's
        injection verdict, page and heading path: the one place documents are parsed,
        and chunks cut and scanned. Raises Unreadable naming the field at fault, for content
        that cannot be read (services/retrieval/parsing.py) and a document without text."""
        title, sections = _sections(document)
        chunks = self._chunker.placed(sections)
        if not chunks:
            raise Unreadable("must contain text", "text")
        texts = [c.text for c in chunks]
        return Chunked(
            title,
            texts,
            verdicts.scan(texts),
            [sections[c.section].page for c in chunks],
            [sections[c.section].heading for c in chunks],
        )

    def _chunk_all(self, documents: list[Document]) -> list[Chunked]:
        """Every document chunked; InvalidArgument with a field violation for each that
        cannot be, naming its id (`documents[i].content: document 'x': is encrypted ...`)."""
        chunked, violations = [], []
        for i, d in enumerate(documents):
            try:
                chunked.append(self.chunk(d))
            except Unreadable as exc:
                violations.append((f"documents[{i}].{exc.field}", f"document {d.id!r}: {exc}"))
        if violations:
            raise InvalidArgument.of(violations)
        return chunked

    async def upsert(
        self, tenant: str, documents: list[Document], timeout_s: float
    ) -> UpsertResult:
        """Stores every document whole; invalid input writes nothing.

        Every field is checked against the store's own limits (StoreLimits) before the
        write is logged. Raises InvalidArgument naming the field (`documents[i].title`; for
        documents that cannot be read, one violation each), FailedPrecondition at a
        replica, Unavailable or DeadlineExceeded from the embedder.
        """
        check_tenant(tenant)
        self._require_primary()
        if not 1 <= len(documents) <= MAX_DOCUMENTS:
            raise InvalidArgument(
                f"documents: must hold 1..{MAX_DOCUMENTS} documents", field="documents"
            )
        ids = [check_document_id(d.id, f"documents[{i}].id") for i, d in enumerate(documents)]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("documents: ids must be unique in one request", field="documents")
        for i, d in enumerate(documents):
            verdicts.check_reserved(d.metadata, f"documents[{i}].metadata")
            check_string_map(d.metadata, f"documents[{i}].metadata")
        # Off the event loop: parsing a PDF or chunking a megabyte takes up to seconds (the
        # tokenizer is thread-safe; the store thread stays free for searches).
        chunked = await asyncio.to_thread(self._chunk_all, documents)
        limits = self._store.limits
        for i, (d, c) in enumerate(zip(documents, chunked, strict=True)):
            # The metadata as a row stores it, with the longest of its chunks' extras.
            longest = (max(c.injections, key=len), max(c.pages), max(c.headings, key=len))
            metadata = row_metadata(d.metadata, *longest)
            problem = limits.field_problem(tenant, d.id, c.title, metadata, c.texts)
            _refuse(i, problem and (_given(d, problem[0]), problem[1]))
            # Its log entry, sized before minutes of embedding: vectors are dim float32s.
            unembedded = np.zeros((len(c.texts), limits.dim), dtype=np.float32)
            if (size := _upsert_entry(tenant, 0, d, c, unembedded).ByteSize()) > MAX_ENTRY_BYTES:
                why = f"{size:,} bytes of chunks and vectors, over an entry's {MAX_ENTRY_BYTES:,}"
                _refuse(i, (_given(d, "text"), why))
        # The title is embedded with each chunk (it often names what the chunk is about),
        # cut to title_tokens so that the embedder reads the chunk whole.
        flat = [self._chunker.embedding_text(c.title, text) for c in chunked for text in c.texts]
        vectors = await self._embedder.embed(flat, timeout_s)
        entries = []
        offset = 0
        for i, (d, c) in enumerate(zip(documents, chunked, strict=True)):
            rows = vectors[offset : offset + len(c.texts)]
            offset += len(c.texts)
            _refuse(i, limits.vector_problem(rows, len(c.texts)))
            entries.append(_upsert_entry(tenant, 0, d, c, rows))
        async with self._write_lock:
            version = await self._run(self._write, tenant, entries)
        flagged = [rule for c in chunked for rule in c.injections if rule]
        for rule in flagged:
            metrics.FLAGGED_CHUNKS.labels(rule=rule).inc()
        LOGGER.info(
            "upserted %d documents, %d chunks (%d flagged by the injection scan), version %d",
            len(ids),
            len(flat),
            len(flagged),
            version,
        )
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
        """Logs `entries` as the tenant's next version (one transaction), then applies them.

        Raises InvalidArgument when the store refuses them for good (they are rejected, and
        the writes behind them go on); what an unreachable store raises, else."""
        version = self._log.version(tenant) + 1
        for entry in entries:
            entry.version = version
        mine = {entry.seq for entry in self._log.append(entries)}
        refused = {seq: why for seq, why in self._apply_pending().items() if seq in mine}
        if refused:
            field = "id" if entries[0].HasField("delete_document_id") else "documents"
            why = next(iter(refused.values()))
            raise InvalidArgument(f"{field}: the store refused this write: {why}", field=field)
        return version

    def _apply_pending(self) -> dict[int, str]:
        """Applies every logged entry not yet applied, one write at a time, in order.

        At the governance point, a write the store refuses while it still answers (pymilvus
        has already retried unavailability and rate limits) will never apply: its rows are
        removed, its entries rejected (services/retrieval/corpus_log.py) and the entries
        behind it go on; returns the rejected entries' reasons by seq. A replica applies
        what the governance point applied, so it never rejects: a failure there, like an
        unreachable store anywhere (or Unavailable from anything), raises and leaves the
        write pending, to be applied by the next write, pull or restart.
        """
        rejected: dict[int, str] = {}
        while write := self._next_write():
            try:
                self._apply(write)
            except Unavailable:
                raise  # not a refusal (the hot index's snapshot could not be dropped)
            except Exception as exc:
                if not self.is_primary or not self._store.reachable():
                    raise
                why = f"{type(exc).__name__}: {str(exc)[:MAX_REASON_CHARS]}"
                self._reject(write, why)
                rejected.update((entry.seq, why) for entry in write)
            self._log.set_applied(write[-1].seq)
        return rejected

    def _next_write(self) -> list[pb.LogEntry]:
        """The entries of the first write logged after the last applied entry: one version
        of one tenant, consecutive, at most MAX_DOCUMENTS (so within one page)."""
        page = self._log.after(self._log.applied(), LOG_PAGE)
        if not page:
            return []
        key = (page[0].tenant, page[0].version)
        return list(itertools.takewhile(lambda e: (e.tenant, e.version) == key, page))

    def _apply(self, write: list[pb.LogEntry]) -> None:
        """Makes Milvus hold one write's change: its documents in one upsert, or a deletion.
        Applying it twice changes nothing; a rejected entry changes nothing."""
        live = [entry for entry in write if not entry.rejected]
        if not live:
            return
        first = live[0]
        if first.HasField("upsert"):
            rows = [_rows(entry.upsert) for entry in live]
            self._store.replace_documents(first.tenant, rows, first.version)
        else:
            for entry in live:
                self._store.delete_document(entry.tenant, entry.delete_document_id)
        self._store.set_version(first.tenant, first.version)

    def _reject(self, write: list[pb.LogEntry], why: str) -> None:
        """Removes what a refused write may have stored, then marks its entries rejected."""
        first = write[0]
        documents = [entry.upsert.id for entry in write if entry.HasField("upsert")]
        if documents:
            self._store.delete_version(first.tenant, documents, first.version)
        self._log.reject(write, why)
        metrics.REJECTED_WRITES.inc(len(write))
        LOGGER.error(
            "rejected write of tenant %s, version %d (log entries %d-%d): the store refused it",
            telemetry.digest(first.tenant),
            first.version,
            first.seq,
            write[-1].seq,
        )

    async def recover(self) -> int:
        """At start: loads the hot index, then applies what was logged but not applied.

        Never fails the start for the log's sake: a write that cannot be applied yet (the
        store unreachable; at a replica, any failure) stays pending and is retried by the
        next write or pull. Returns how many entries were applied.
        """
        async with self._write_lock:
            if self._hot is not None:
                await self._run(self._hot.load)
            elif self._config.hot_snapshot:
                # One left by a run with the index on would not see this run's writes.
                await self._run(hot_snapshot.drop, Path(self._config.hot_snapshot))
            before = await self._run(self._log.applied)
            try:
                await self._run(self._apply_pending)
            except Exception:
                LOGGER.exception("logged writes not applied at start; retried later")
            count = await self._run(self._log.applied) - before
        if count:
            LOGGER.info("recovered %d logged writes", count)
        return count

    async def replicate(self, entries: list[pb.LogEntry], head: int) -> None:
        """A replica: stores the governance point's entries in its own log, then applies them.

        Raises what applying raises; the entries stay in the log, applied by the next pull."""
        async with self._write_lock:
            self.primary_head = head
            if entries:
                await self._run(self._log.copy, entries)
            await self._run(self._apply_pending)

    async def log_after(self, seq: int, limit: int) -> tuple[list[pb.LogEntry], int]:
        """The governance point's entries after `seq` that it has applied or rejected (a
        pending one may still be rejected), at most PULL_MAX_BYTES of them; and the last."""
        self._require_primary()
        async with self._write_lock:
            decided = await self._run(self._log.applied)
            entries = await self._run(
                functools.partial(
                    self._log.after, seq, limit, through=decided, max_bytes=PULL_MAX_BYTES
                )
            )
        return entries, decided

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
        self,
        tenant: str,
        query: str,
        top_k: int,
        filters: dict[str, str],
        timeout_s: float,
        hybrid: bool | None = None,
    ) -> tuple[list[StoredChunk], int, np.ndarray]:
        """The best chunks of `tenant`'s corpus for `query`, the corpus version, and the
        query's vector (float32, unit length). Hybrid (None: `retrieval.hybrid`) ranks by
        vector and by BM25, fused (services/retrieval/hot_index.py); it raises
        FailedPrecondition where the hot index is off."""
        check_tenant(tenant)
        if not query.strip():
            raise InvalidArgument("query: must not be empty", field="query")
        check_range(top_k, 1, MAX_TOP_K, "top_k")
        verdicts.check_reserved(filters, "filters")
        check_string_map(filters, "filters")
        hybrid = self._config.hybrid if hybrid is None else hybrid
        search: Callable[..., list[StoredChunk]] = self._store.search
        if hybrid:
            if self._hot is None:
                raise FailedPrecondition("hybrid: needs the hot index (retrieval.hot_index)")
            search = functools.partial(self._hot.search, text=query)
        with _TRACER.start_as_current_span("retrieve") as span:
            vector = (await self._embedder.embed([query], timeout_s))[0]
            chunks = await self._run(search, tenant, vector, top_k, filters)
            version = await self.version(tenant)
            if span.is_recording():
                found = _retrieval_attributes(tenant, query, top_k, chunks, version, hybrid)
                span.set_attributes(found)
        return chunks, version, vector

    async def embed(self, texts: list[str], timeout_s: float) -> tuple[np.ndarray, list[int]]:
        """The vectors searches use for `texts` (float32, [len(texts), embedding_dim], unit
        length) and the tokens the embedder reads of each, [CLS] and [SEP] included.

        Raises InvalidArgument naming `input` for no texts or more than MAX_EMBED_INPUTS,
        and `input[i]` for an empty text or one over the embedder's window (it would read a
        truncated text, and the vector would not be the text's); Unavailable or
        DeadlineExceeded from the embedder.
        """
        if not 1 <= len(texts) <= MAX_EMBED_INPUTS:
            raise InvalidArgument(
                f"input: must hold 1..{MAX_EMBED_INPUTS} texts, got {len(texts)}", field="input"
            )
        window = self._config.embedder_tokens
        counts = []
        for i, text in enumerate(texts):
            size = self._chunker.count(text) + 2 if text.strip() else 0
            if not size or size > window:
                why = "is empty" if not size else f"is {size} tokens, over the embedder's {window}"
                raise InvalidArgument(f"input[{i}]: {why}", field=f"input[{i}]")
            counts.append(size)
        vectors = await self._embedder.embed(texts, timeout_s)
        return vectors, counts

    async def version(self, tenant: str) -> int:
        return await self._run(self._store.version, check_tenant(tenant))

    async def close(self) -> None:
        await self._embedder.close()
        await self._run(self._store.close)
        await self._run(self._log.close)
        self._executor.shutdown(wait=True)
