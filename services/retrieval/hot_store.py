"""Milvus as the store of record, searched through the hot index kept in process.

HotStore is a VectorStore, as MilvusStore is. Every write goes to Milvus first and reaches the hot
index only once Milvus took it, so what a search can return is always acknowledged data.
Searches run on the hot index alone (docs/retrieval.md, "Retrieval at size": Milvus Lite
scans every row in Python on each search), hybrid ones too (BM25 beside the vectors).
`load` fills the index at start, from its snapshot (services/retrieval/hot_snapshot.py) when
that matches Milvus's corpus versions, else from every row in Milvus; until it has, and after
a failed write whose effect on Milvus could not be read back, search goes to Milvus, by
vector alone. The snapshot is saved after a load from Milvus and at close, dropped before
the first write after it was saved.
Tenant versions are cached beside the index. Like MilvusStore it is not thread-safe: the
retrieval core calls it from one worker thread.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from services.common.errors import Unavailable
from services.retrieval import hot_snapshot, metrics
from services.retrieval.hot_index import HotIndex
from services.retrieval.store import (
    DocumentRows,
    MilvusStore,
    ScannedRow,
    StoredChunk,
    StoreLimits,
)

LOGGER = logging.getLogger(__name__)
# The snapshot on disk: equal to the index, none, or unknown (from before this load).
OnDisk = Literal["equal", "none", "unknown"]


class HotStore:
    def __init__(self, milvus: MilvusStore, dim: int, snapshot: Path | None = None) -> None:
        """`snapshot`: where the index is saved (services/retrieval/hot_snapshot.py); None:
        never saved, always loaded from Milvus."""
        self._milvus = milvus
        self._dim = dim
        self._index: HotIndex | None = None  # None: not loaded, or not to be trusted
        self._versions: dict[str, int] = {}
        self._snapshot = snapshot
        self._on_disk: OnDisk = "unknown"
        self.loaded_from = ""  # "snapshot" or "milvus", once loaded

    @property
    def index(self) -> HotIndex | None:
        return self._index

    @property
    def limits(self) -> StoreLimits:
        return self._milvus.limits

    def reachable(self) -> bool:
        return self._milvus.reachable()

    def load(self) -> None:
        """Fills a fresh index: from the snapshot when it matches Milvus's corpus versions,
        else from every chunk row Milvus holds (then saved as the snapshot)."""
        started = time.perf_counter()
        versions = self._milvus.versions()
        stamp = hot_snapshot.Stamp(self._milvus.collection, self._dim, versions)
        index = None if self._snapshot is None else hot_snapshot.read(self._snapshot, stamp)
        self.loaded_from = "milvus" if index is None else "snapshot"
        if index is None:
            index = HotIndex(self._dim)
            for batch in self._milvus.scan():
                _add(index, batch)
            index.train()
        else:
            self._on_disk = "equal"
        self._versions = versions
        self._index = index
        elapsed = time.perf_counter() - started
        metrics.HOT_INDEX_LOAD.labels(self.loaded_from).set(elapsed)
        LOGGER.info(
            "hot index: %d rows of %d tenants loaded from %s in %.1f s, %.0f MiB",
            index.rows,
            len(versions),
            self.loaded_from,
            elapsed,
            index.footprint() / 2**20,
        )
        self.save()

    def save(self) -> None:
        """Saves the index as the snapshot, unless the one there already equals it (or the
        index is not loaded or not trusted). A failure is logged: the next start reads
        Milvus."""
        if self._snapshot is None or self._index is None or self._on_disk == "equal":
            return
        started = time.perf_counter()
        stamp = hot_snapshot.Stamp(self._milvus.collection, self._dim, dict(self._versions))
        try:
            hot_snapshot.save(self._index, stamp, self._snapshot)
        except Exception:  # never the start's or the stop's failure: Milvus has every row
            LOGGER.exception("hot index: cannot save its snapshot; the next start reads Milvus")
            return
        self._on_disk = "equal"
        LOGGER.info("hot index: snapshot saved in %.1f s", time.perf_counter() - started)

    def _changing(self) -> None:
        """Before a write: drops the snapshot, which will no longer equal Milvus. Raises
        Unavailable when it cannot: the write stays pending (it is not Milvus refusing it)."""
        if self._snapshot is not None and self._on_disk != "none":
            try:
                hot_snapshot.drop(self._snapshot)
            except OSError as exc:
                raise Unavailable(f"hot index snapshot cannot be dropped: {exc}") from exc
            self._on_disk = "none"

    def _follow(self, change: Callable[[HotIndex], None]) -> None:
        """Applies a change Milvus took to the index; if that fails, the index is no longer
        trusted (searches go to Milvus, nothing is saved) until the next start."""
        if self._index is None:
            return
        try:
            change(self._index)
        except Exception:
            LOGGER.exception("hot index: cannot follow a write; searching Milvus")
            self._index = None

    def version(self, tenant: str) -> int:
        if self._index is None:
            return self._milvus.version(tenant)
        return self._versions.get(tenant, 0)

    def set_version(self, tenant: str, version: int) -> None:
        self._changing()
        self._milvus.set_version(tenant, version)
        self._versions[tenant] = version

    def replace_documents(self, tenant: str, documents: list[DocumentRows], version: int) -> None:
        self._changing()
        try:
            self._milvus.replace_documents(tenant, documents, version)
        except Exception:
            self._reread(tenant, [d.document_id for d in documents])
            raise

        def put(index: HotIndex) -> None:
            for d in documents:
                index.replace_document(tenant, d.rows(), d.vectors)

        self._follow(put)

    def delete_version(self, tenant: str, document_ids: list[str], version: int) -> None:
        self._changing()
        try:
            self._milvus.delete_version(tenant, document_ids, version)
        finally:
            self._reread(tenant, document_ids)

    def has_document(self, tenant: str, document_id: str) -> bool:
        return self._milvus.has_document(tenant, document_id)

    def delete_document(self, tenant: str, document_id: str) -> int:
        self._changing()
        try:
            deleted = self._milvus.delete_document(tenant, document_id)
        except Exception:
            self._reread(tenant, [document_id])
            raise
        self._follow(lambda index: index.delete_document(tenant, document_id))
        return deleted

    def search(
        self, tenant: str, vector: np.ndarray, top_k: int, filters: dict[str, str], text: str = ""
    ) -> list[StoredChunk]:
        """HotIndex.search, hybrid with `text`; while the index is not loaded or not trusted,
        Milvus's search by vector alone."""
        if self._index is None:
            return self._milvus.search(tenant, vector, top_k, filters)
        return self._index.search(tenant, vector, top_k, filters, text)

    def close(self) -> None:
        """Saves the snapshot if the index changed since it was saved, then closes Milvus."""
        try:
            self.save()
        finally:
            self._milvus.close()

    def _reread(self, tenant: str, document_ids: list[str]) -> None:
        """After a failed write: makes the index hold what Milvus now holds of the documents."""
        if self._index is None:
            return
        try:
            for document_id in document_ids:
                self._index.delete_document(tenant, document_id)
                for batch in self._milvus.scan(tenant, document_id):
                    _add(self._index, batch)
        except Exception:
            LOGGER.exception("hot index: cannot reread after a failed write; searching Milvus")
            self._index = None


def _add(index: HotIndex, rows: list[ScannedRow]) -> None:
    """Adds a batch of scanned rows by tenant; equal metadata, titles and headings share one
    object."""
    by_tenant: defaultdict[str, list[ScannedRow]] = defaultdict(list)
    for row in rows:
        by_tenant[row.tenant].append(row)
    shared: dict[object, Any] = {}
    for tenant, group in by_tenant.items():
        chunks = [
            replace(
                r.chunk,
                title=shared.setdefault(r.chunk.title, r.chunk.title),
                heading=shared.setdefault(r.chunk.heading, r.chunk.heading),
                metadata=shared.setdefault(
                    tuple(sorted(r.chunk.metadata.items())), r.chunk.metadata
                ),
            )
            for r in group
        ]
        index.add(tenant, chunks, np.asarray([r.vector for r in group], dtype=np.float32))
