"""The vector store: Milvus (Lite by default, any Milvus URI by config).

Chunks of one tenant live beside other tenants' in one collection; every read and
delete is filtered by tenant here, so no caller can forget it. Each chunk row carries
the corpus version that wrote it: a re-ingest upserts the new version's chunks in one
call, then deletes the older versions' chunks of that document, so a document is
never half old and half new, and writing the same version twice changes nothing.
Per-tenant corpus versions live in a second collection. Milvus is the store of record;
services/retrieval/hot_store.py keeps an in-process index of it for fast search. Each row
keeps its chunk's injection verdict inside its metadata JSON (services/retrieval/verdicts.py),
and beside it, for the same reasons, where the chunk is in its document: PAGE_KEY and
HEADING_KEY (services/retrieval/parsing.py), absent where it has none.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from services.common.schemas import MILVUS_COLLECTION
from services.retrieval import verdicts

LOGGER = logging.getLogger(__name__)
PAGE_KEY = f"{verdicts.RESERVED_PREFIX}page"
HEADING_KEY = f"{verdicts.RESERVED_PREFIX}heading"


@dataclass(frozen=True)
class StoredChunk:
    document_id: str
    chunk_index: int
    score: float
    text: str
    title: str
    metadata: dict[str, str]
    injection: str = ""  # the ingest scan's verdict: a rule's name, "" for clean
    page: int = 0  # the PDF page the chunk is on; 0: none
    heading: str = ""  # the path of the headings above it; "": none


@dataclass(frozen=True)
class DocumentRows:
    """One document's chunks, their vectors, their injection verdicts, pages and heading
    paths, as one corpus version writes them. Without verdicts (a log entry from before the
    ingest scan), the chunks are scanned here; without pages or headings, they have none."""

    document_id: str
    title: str
    metadata: dict[str, str]
    chunks: list[str]
    vectors: np.ndarray
    injections: list[str] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    headings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.injections:
            object.__setattr__(self, "injections", verdicts.scan(self.chunks))
        object.__setattr__(self, "pages", self.pages or [0] * len(self.chunks))
        object.__setattr__(self, "headings", self.headings or [""] * len(self.chunks))
        counts = {
            "injection verdicts": len(self.injections),
            "pages": len(self.pages),
            "heading paths": len(self.headings),
        }
        for name, count in counts.items():
            if count != len(self.chunks):
                raise ValueError(f"{count} {name} for {len(self.chunks)} chunks")

    def rows(self) -> list[StoredChunk]:
        """The chunks as stored (score 0)."""
        places = zip(self.chunks, self.injections, self.pages, self.headings, strict=True)
        return [
            StoredChunk(self.document_id, i, 0.0, text, self.title, self.metadata, rule, page, path)
            for i, (text, rule, page, path) in enumerate(places)
        ]


def row_metadata(
    metadata: dict[str, str], injection: str, page: int, heading: str
) -> dict[str, str]:
    """A chunk row's metadata JSON: the document's metadata, the chunk's verdict, its page
    and heading path where it has them."""
    row = verdicts.stored(metadata, injection)
    if page:
        row[PAGE_KEY] = str(page)
    if heading:
        row[HEADING_KEY] = heading
    return row


@dataclass(frozen=True)
class ScannedRow:
    """A chunk row as stored (score 0) with its tenant and vector: what an in-process index
    needs to search it."""

    tenant: str
    chunk: StoredChunk
    vector: list[float]


SCAN_FIELDS = ["tenant", "document_id", "chunk_index", "title", "text", "metadata", "vector"]
SCAN_BATCH = 4096
# Milvus refuses a JSON value over `common.JSONMaxLength` bytes, 65,536 by default
# (milvus configs/milvus.yaml); Milvus Lite takes more, a server does not.
JSON_MAX_BYTES = 65_536
# The digits of the largest corpus version (an int64) in a row id.
VERSION_DIGITS = 19
# The collections' schema version and the oldest that reads them (services/common/schemas.py),
# as two rows of the versions collection under names no tenant can have ('#': check_tenant),
# each number n stored as -1 - n, so that no tenant query, this release's or an older one's
# (`version >= 0`), ever sees them.
SCHEMA_ROWS = ("#schema_version", "#schema_readable_by")
# Every read sees every write acknowledged before it. A Milvus server's default level,
# "Bounded", reads a state up to `common.gracefulTime` (5 s) old: a search right after an
# ingest would miss it, and a re-ingest's old chunks would still show. Collections are made
# with it (what a query iterator, which takes no level, reads by) and every query and search
# asks for it. Milvus Lite always reads its latest state.
CONSISTENCY = "Strong"


@dataclass(frozen=True)
class StoreLimits:
    """What one chunk row may hold, read from the collection's own schema.

    Sizes are UTF-8 bytes: a Milvus server counts a VARCHAR's `max_length` in bytes (Milvus
    Lite counts characters, never fewer), so a check in bytes holds for both.
    """

    varchar_bytes: dict[str, int]  # VARCHAR field -> max_length
    dim: int

    def field_problem(
        self,
        tenant: str,
        document_id: str,
        title: str,
        metadata: dict[str, str],
        chunks: list[str],
    ) -> tuple[str, str] | None:
        """The first field of a document the store would refuse, as (field, why); or None.

        Fields are named as the API names them: `id`, `title`, `metadata`, `text`.
        """
        longest = row_id(tenant, document_id, 10**VERSION_DIGITS - 1, len(chunks))
        checks: list[tuple[str, str, str]] = [
            ("id", "id", longest),
            ("id", "document_id", document_id),
            ("title", "title", title),
            *(("text", "text", chunk) for chunk in chunks),
        ]
        for name, column, value in checks:
            size, limit = len(value.encode()), self.varchar_bytes.get(column, math.inf)
            if size > limit:
                return name, f"{size:,} bytes of UTF-8, over the store's limit of {limit:,}"
        # ensure_ascii: the longest of the encodings a client library may send (\uXXXX).
        size = len(json.dumps(metadata).encode())
        if size > JSON_MAX_BYTES:
            return (
                "metadata",
                f"{size:,} bytes as JSON, over the store's limit of {JSON_MAX_BYTES:,}",
            )
        return None

    def vector_problem(self, vectors: np.ndarray, chunks: int) -> tuple[str, str] | None:
        """Why the store would refuse a document's vectors (one row per chunk), or None."""
        if vectors.shape != (chunks, self.dim):
            return (
                "text",
                f"embeddings of shape {vectors.shape}, the store takes ({chunks}, {self.dim})",
            )
        if not np.isfinite(vectors).all():
            return "text", "its embeddings hold values that are not finite numbers"
        return None


class VectorStore(Protocol):
    """What the retrieval core asks of its store: MilvusStore, or HotStore in front of it.

    Synchronous and not thread-safe: the core calls it from one worker thread. Every read
    and delete is confined to one tenant.
    """

    @property
    def limits(self) -> StoreLimits: ...
    def reachable(self) -> bool: ...
    def version(self, tenant: str) -> int: ...
    def set_version(self, tenant: str, version: int) -> None: ...
    def replace_documents(
        self, tenant: str, documents: list[DocumentRows], version: int
    ) -> None: ...
    def delete_version(self, tenant: str, document_ids: list[str], version: int) -> None: ...
    def has_document(self, tenant: str, document_id: str) -> bool: ...
    def delete_document(self, tenant: str, document_id: str) -> int: ...
    def search(
        self, tenant: str, vector: np.ndarray, top_k: int, filters: dict[str, str]
    ) -> list[StoredChunk]: ...
    def close(self) -> None: ...


def row_id(tenant: str, document_id: str, version: int, chunk_index: int) -> str:
    """A chunk row's primary key: tenant, document, version and chunk."""
    return f"{tenant}/{document_id}/{version}/{chunk_index}"


def literal(value: str) -> str:
    """A Milvus string literal; JSON quoting escapes quotes and backslashes."""
    return json.dumps(value, ensure_ascii=False)


class MilvusStore:
    """Synchronous Milvus access; the retrieval core runs it in worker threads."""

    def __init__(self, uri: str, token: str, collection: str, dim: int) -> None:
        if "://" not in uri:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        self._client = MilvusClient(uri=uri, token=token)
        self._chunks = collection
        self._versions = f"{collection}_versions"
        self._dim = dim
        self._ensure_collections()

    @property
    def collection(self) -> str:
        """The chunk collection's name."""
        return self._chunks

    def _ensure_collections(self) -> None:
        if not self._client.has_collection(self._chunks):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("tenant", DataType.VARCHAR, max_length=128)
            schema.add_field("document_id", DataType.VARCHAR, max_length=256)
            schema.add_field("version", DataType.INT64)
            schema.add_field("chunk_index", DataType.INT64)
            schema.add_field("title", DataType.VARCHAR, max_length=1024)
            schema.add_field("text", DataType.VARCHAR, max_length=65_535)
            # The document's metadata, the chunk's injection verdict (verdicts.KEY), page
            # and heading path (PAGE_KEY, HEADING_KEY).
            schema.add_field("metadata", DataType.JSON)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dim)
            index = self._client.prepare_index_params()
            index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
            self._client.create_collection(
                self._chunks, schema=schema, index_params=index, consistency_level=CONSISTENCY
            )
        if not self._client.has_collection(self._versions):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("tenant", DataType.VARCHAR, is_primary=True, max_length=128)
            schema.add_field("version", DataType.INT64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one
            index = self._client.prepare_index_params()
            index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="L2")
            self._client.create_collection(
                self._versions, schema=schema, index_params=index, consistency_level=CONSISTENCY
            )
        self._client.load_collection(self._chunks)
        self._client.load_collection(self._versions)
        self._check_schema()
        self.limits = self._read_limits()
        if self.limits.dim != self._dim:
            raise ValueError(
                f"retrieval.embedding_dim: {self._dim}, but the collection {self._chunks!r} "
                f"holds vectors of {self.limits.dim} dimensions"
            )

    def schema(self) -> tuple[int, int]:
        """(the schema version that wrote the collections, the oldest version that reads
        them); (0, 0) for collections from before versions were kept."""
        names = ", ".join(literal(n) for n in SCHEMA_ROWS)
        rows = self._query(self._versions, f"tenant in [{names}]", ["tenant", "version"])
        found = {str(r["tenant"]): -1 - int(r["version"]) for r in rows}
        written, readable_by = (found.get(name, 0) for name in SCHEMA_ROWS)
        return written, readable_by

    def _check_schema(self) -> None:
        """Raises FailedPrecondition for collections this release may not read; marks older
        ones it reads with its own numbers."""
        written, readable_by = self.schema()
        MILVUS_COLLECTION.check(written, readable_by)
        if written < MILVUS_COLLECTION.version:
            numbers = (MILVUS_COLLECTION.version, MILVUS_COLLECTION.readable_by)
            rows = [
                {"tenant": name, "version": -1 - n, "vector": [0.0, 0.0]}
                for name, n in zip(SCHEMA_ROWS, numbers, strict=True)
            ]
            self._client.upsert(self._versions, rows)

    def _read_limits(self) -> StoreLimits:
        """The chunk collection's VARCHAR lengths and vector dimension, as Milvus reports them
        (a collection made by an older release may differ from the schema above)."""
        described = self._client.describe_collection(self._chunks)
        level = described.get("consistency_level_name", CONSISTENCY)
        if level != CONSISTENCY:
            LOGGER.warning(
                "collection %s reads %s by default (made by an older release): a start may "
                "load it without the writes of its last seconds (docs/retrieval.md, "
                '"Milvus deployments")',
                self._chunks,
                level,
            )
        fields = described["fields"]
        varchar = {
            f["name"]: int(f["params"]["max_length"])
            for f in fields
            if f["type"] == DataType.VARCHAR
        }
        dim = next(int(f["params"]["dim"]) for f in fields if f["name"] == "vector")
        return StoreLimits(varchar_bytes=varchar, dim=dim)

    def _query(
        self, collection: str, where: str, fields: list[str], **options: Any
    ) -> list[dict[str, Any]]:
        """The rows of `collection` that match `where`, read at CONSISTENCY."""
        return list(
            self._client.query(
                collection,
                filter=where,
                output_fields=fields,
                consistency_level=CONSISTENCY,
                **options,
            )
        )

    def reachable(self) -> bool:
        """Whether Milvus answers at all: tells a refused write from an unreachable store."""
        try:
            self._client.has_collection(self._chunks)
        except (MilvusException, OSError):
            return False
        return True

    def version(self, tenant: str) -> int:
        rows = self._query(self._versions, f"tenant == {literal(tenant)}", ["version"])
        return int(rows[0]["version"]) if rows else 0

    def set_version(self, tenant: str, version: int) -> None:
        row = {"tenant": tenant, "version": version, "vector": [0.0, 0.0]}
        self._client.upsert(self._versions, [row])

    def replace_documents(self, tenant: str, documents: list[DocumentRows], version: int) -> None:
        """`replace_document` for many documents of one version: one upsert, one delete."""
        rows = [
            {
                "id": row_id(tenant, d.document_id, version, c.chunk_index),
                "tenant": tenant,
                "document_id": d.document_id,
                "version": version,
                "chunk_index": c.chunk_index,
                "title": d.title,
                "text": c.text,
                "metadata": row_metadata(d.metadata, c.injection, c.page, c.heading),
                "vector": vector.tolist(),
            }
            for d in documents
            for c, vector in zip(d.rows(), d.vectors, strict=True)
        ]
        self._client.upsert(self._chunks, rows)
        ids = ", ".join(literal(d.document_id) for d in documents)
        self._client.delete(
            self._chunks,
            filter=f"tenant == {literal(tenant)} and document_id in [{ids}] "
            f"and version != {version}",
        )

    def delete_version(self, tenant: str, document_ids: list[str], version: int) -> None:
        """Deletes the rows one version wrote of these documents: what a refused write may
        have left behind; the documents' other versions stay."""
        ids = ", ".join(literal(d) for d in document_ids)
        self._client.delete(
            self._chunks,
            filter=f"tenant == {literal(tenant)} and document_id in [{ids}] "
            f"and version == {version}",
        )

    def has_document(self, tenant: str, document_id: str) -> bool:
        where = self._document(tenant, document_id)
        return bool(self._query(self._chunks, where, ["id"], limit=1))

    def delete_document(self, tenant: str, document_id: str) -> int:
        """Deletes the document's chunks; returns how many there were."""
        where = self._document(tenant, document_id)
        found = self._query(self._chunks, where, ["id"])
        if found:
            self._client.delete(self._chunks, filter=where)
        return len(found)

    def search(
        self, tenant: str, vector: np.ndarray, top_k: int, filters: dict[str, str]
    ) -> list[StoredChunk]:
        where = " and ".join(
            [f"tenant == {literal(tenant)}"]
            + [f"metadata[{literal(k)}] == {literal(v)}" for k, v in sorted(filters.items())]
        )
        hits = self._client.search(
            self._chunks,
            data=[vector.tolist()],
            limit=top_k,
            filter=where,
            output_fields=["document_id", "chunk_index", "title", "text", "metadata"],
            search_params={"metric_type": "COSINE"},
            consistency_level=CONSISTENCY,
        )[0]
        return [_chunk(hit) for hit in hits]

    def versions(self) -> dict[str, int]:
        """Every tenant's corpus version."""
        rows = self._query(self._versions, "version >= 0", ["tenant", "version"])
        return {str(r["tenant"]): int(r["version"]) for r in rows}

    def scan(self, tenant: str = "", document_id: str = "") -> Iterator[list[ScannedRow]]:
        """Every chunk row with its vector, in batches; of one tenant or document if named."""
        where = ""
        if document_id:
            where = self._document(tenant, document_id)
        elif tenant:
            where = f"tenant == {literal(tenant)}"
        batches = self._client.query_iterator(
            self._chunks, batch_size=SCAN_BATCH, filter=where, output_fields=SCAN_FIELDS
        )
        try:
            while batch := batches.next():
                yield [_scanned(row) for row in batch]
        finally:
            batches.close()

    def flush(self) -> None:
        """Seals buffered writes into indexed segments (Milvus does it on its own, too)."""
        self._client.flush(self._chunks)

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _document(tenant: str, document_id: str) -> str:
        return f"tenant == {literal(tenant)} and document_id == {literal(document_id)}"


def _scanned(row: dict[str, Any]) -> ScannedRow:
    chunk = _chunk({"entity": row, "distance": 0.0})
    return ScannedRow(tenant=str(row["tenant"]), chunk=chunk, vector=row["vector"])


def _chunk(hit: dict[str, Any]) -> StoredChunk:
    entity = hit["entity"]
    metadata, injection = verdicts.split(entity.get("metadata"), entity["text"])
    page = metadata.pop(PAGE_KEY, "0")
    return StoredChunk(
        document_id=entity["document_id"],
        chunk_index=int(entity["chunk_index"]),
        score=float(hit["distance"]),
        text=entity["text"],
        title=entity["title"],
        metadata=metadata,
        injection=injection,
        page=int(page) if page.isdigit() else 0,
        heading=metadata.pop(HEADING_KEY, ""),
    )
