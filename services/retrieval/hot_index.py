"""The hot index: the chunk rows Milvus holds, kept in process and searched in memory.

Rows live per tenant, each tenant in its own dense float32 matrix of unit vectors, so a
search reads its tenant's rows and no other's. Beside each vector the index keeps the
rest of the row (document, chunk index, title, text, metadata, injection verdict, page,
heading path), so a search never waits on Milvus. Deleting a row moves the last row into
its place: the matrix has no holes.

Search scores inner products, equal to cosine on unit vectors. The candidates are the
tenant's rows whose metadata equal every filter. Up to EXACT_ROWS candidates are all
scored (exact search). Above that an inverted file narrows them: the tenant's rows are
clustered (spherical k-means), and only the clusters nearest the query are scored, as many
as hold PROBE_FRACTION of the candidates (at least PROBE_MIN_ROWS). Clusters are trained
again each time the tenant has doubled; rows added between go to their nearest cluster.

Beside its vectors each tenant keeps a BM25 index of its rows (services/retrieval/lexical.py).
A hybrid search ranks the candidates twice, by vector (as above) and by BM25 for the query's
words, each to FUSION_DEPTH rows, and fuses the two rankings by reciprocal rank
(services/retrieval/fusion.py). Whichever way a row is ranked, its score is its cosine to the
query, so a score means the same in either search.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from services.retrieval import fusion
from services.retrieval.lexical import Lexicon, row_text
from services.retrieval.store import StoredChunk

EXACT_ROWS = 20_000
PROBE_FRACTION = 1 / 16
PROBE_MIN_ROWS = 8_192
# Rows each ranking hands to the fusion: MAX_TOP_K (services/retrieval/core.py). Past rank
# 100, 1 / (60 + rank) changes little: a row there counts less than half of one at rank 1.
FUSION_DEPTH = 100
_KMEANS_ITERATIONS = 8
_KMEANS_SAMPLE_PER_LIST = 64
_MIN_CAPACITY = 64
_NO_VALUE = -1


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, highest first."""
    k = min(k, len(scores))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best], kind="stable")]


def kmeans(vectors: np.ndarray, lists: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means on a sample of `vectors`: `lists` unit centroids."""
    rng = np.random.default_rng(seed)
    take = min(len(vectors), lists * _KMEANS_SAMPLE_PER_LIST)
    sample = vectors[np.sort(rng.choice(len(vectors), take, replace=False))]
    centroids = sample[rng.choice(take, lists, replace=False)].copy()
    for _ in range(_KMEANS_ITERATIONS):
        nearest = np.argmax(sample @ centroids.T, axis=1)
        order = np.argsort(nearest, kind="stable")
        present, starts = np.unique(nearest[order], return_index=True)
        centroids[present] = np.add.reduceat(sample[order], starts, axis=0)
        empty = np.setdiff1d(np.arange(lists), present)
        centroids[empty] = sample[rng.choice(take, len(empty), replace=False)]
        centroids = unit(centroids)
    return centroids


class Partition:
    """One tenant's rows: row i is `vectors[i]` and `rows[i]` (its score left at 0)."""

    def __init__(self, dim: int) -> None:
        self.size = 0
        self.vectors = np.empty((_MIN_CAPACITY, dim), dtype=np.float32)
        self.lists = np.zeros(_MIN_CAPACITY, dtype=np.int32)  # cluster of each row
        self.rows: list[StoredChunk] = []
        self.lexicon = Lexicon()
        self.documents: dict[str, list[int]] = {}  # rows of each document
        self.values: dict[str, np.ndarray] = {}  # metadata key: value code of each row
        self.codes: dict[str, dict[str, int]] = {}  # metadata key: value: code
        self.centroids: np.ndarray | None = None
        self.trained_rows = 0

    @classmethod
    def restore(
        cls,
        rows: list[StoredChunk],
        vectors: np.ndarray,
        lists: np.ndarray,
        centroids: np.ndarray | None,
        trained_rows: int,
        lexicon: Lexicon,
    ) -> Partition:
        """A partition as one was saved (services/retrieval/hot_snapshot.py): its rows in
        order, their unit vectors [rows, dim] and clusters [rows], its centroids (None:
        untrained) and BM25 index; nothing is computed again but the filter columns."""
        partition = cls(vectors.shape[1])
        partition._place(rows, vectors)
        partition.lists[: len(rows)] = lists
        partition.centroids, partition.trained_rows = centroids, trained_rows
        partition.lexicon = lexicon
        return partition

    def add(self, rows: list[StoredChunk], vectors: np.ndarray) -> None:
        start = self.size
        self._place(rows, unit(vectors))
        if self.centroids is not None:
            block = self.vectors[start : self.size]
            self.lists[start : self.size] = np.argmax(block @ self.centroids.T, axis=1)
        self.lexicon.add([row_text(r.title, r.text) for r in rows])

    def _place(self, rows: list[StoredChunk], vectors: np.ndarray) -> None:
        """Appends rows with their unit vectors, metadata codes and document places."""
        start, end = self.size, self.size + len(rows)
        self._reserve(end)
        self.vectors[start:end] = vectors
        for key in {k for r in rows for k in r.metadata}.difference(self.values):
            self.values[key] = np.full(len(self.vectors), _NO_VALUE, dtype=np.int32)
            self.codes[key] = {}
        for key, column in self.values.items():
            codes = self.codes[key]
            column[start:end] = [
                codes.setdefault(r.metadata[key], len(codes)) if key in r.metadata else _NO_VALUE
                for r in rows
            ]
        for i, row in enumerate(rows, start):
            self.documents.setdefault(row.document_id, []).append(i)
        self.rows.extend(rows)
        self.size = end

    def remove(self, document_id: str) -> None:
        for row in sorted(self.documents.pop(document_id, []), reverse=True):
            self._remove_row(row)
        if self.size < len(self.vectors) // 4:
            self._resize(max(_MIN_CAPACITY, len(self.vectors) // 2))

    def _remove_row(self, row: int) -> None:
        """Moves the last row into `row`; removing in descending order keeps this valid."""
        last = self.size - 1
        gone, kept = self.rows[row], self.rows[last]
        self.lexicon.remove(row, row_text(gone.title, gone.text), row_text(kept.title, kept.text))
        if row != last:
            for column in (self.vectors, self.lists, *self.values.values()):
                column[row] = column[last]
            self.rows[row] = self.rows[last]
            moved = self.documents[self.rows[row].document_id]
            moved[moved.index(last)] = row
        self.rows.pop()
        self.size = last

    def _reserve(self, rows: int) -> None:
        if rows > len(self.vectors):
            self._resize(max(rows, len(self.vectors) + len(self.vectors) // 4))

    def trim(self) -> None:
        self._resize(max(_MIN_CAPACITY, self.size))

    def _resize(self, capacity: int) -> None:
        def fit(column: np.ndarray, fill: int = 0) -> np.ndarray:
            grown = np.full((capacity, *column.shape[1:]), fill, dtype=column.dtype)
            grown[: self.size] = column[: self.size]
            return grown

        self.vectors, self.lists = fit(self.vectors), fit(self.lists)
        self.values = {key: fit(column, _NO_VALUE) for key, column in self.values.items()}

    def train(self, force: bool = False) -> None:
        """Clusters the rows when they first pass EXACT_ROWS and each time they double."""
        if self.size <= EXACT_ROWS:
            self.centroids, self.trained_rows = None, 0
            return
        if not force and self.centroids is not None and self.size < 2 * self.trained_rows:
            return
        rows = self.vectors[: self.size]
        self.centroids = kmeans(rows, int(np.sqrt(self.size)))
        for start in range(0, self.size, 8192):
            block = rows[start : start + 8192]
            self.lists[start : start + len(block)] = np.argmax(block @ self.centroids.T, axis=1)
        self.trained_rows = self.size

    def candidates(self, filters: dict[str, str]) -> np.ndarray | None:
        """A mask of the rows whose metadata equal every filter; None for all rows."""
        mask = None
        for key, value in filters.items():
            code = self.codes.get(key, {}).get(value)
            if code is None:
                return np.zeros(self.size, dtype=bool)
            match = self.values[key][: self.size] == code
            mask = match if mask is None else mask & match
        return mask

    def probe(self, query: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
        """Narrows `mask` to the nearest clusters, or leaves it when few rows remain."""
        count = self.size if mask is None else int(mask.sum())
        if self.centroids is None or count <= EXACT_ROWS:
            return mask
        lists = self.lists[: self.size]
        sizes = np.bincount(lists if mask is None else lists[mask], minlength=len(self.centroids))
        nearest = np.argsort(-(self.centroids @ query))
        need = max(PROBE_FRACTION * count, PROBE_MIN_ROWS)
        taken = int(np.searchsorted(np.cumsum(sizes[nearest]), need)) + 1
        chosen = np.zeros(len(self.centroids), dtype=bool)
        chosen[nearest[:taken]] = True
        probed = chosen[lists]
        return probed if mask is None else mask & probed

    def nearest(self, query: np.ndarray, k: int, mask: np.ndarray | None) -> np.ndarray:
        """The k rows (of those `mask` keeps; None: all) nearest `query`, nearest first."""
        mask = self.probe(query, mask)
        where = np.arange(self.size) if mask is None else np.flatnonzero(mask)
        vectors = self.vectors[: self.size] if mask is None else self.vectors[where]
        return where[top(_scores(vectors, query), k)]

    def search(
        self, query: np.ndarray, top_k: int, filters: dict[str, str], text: str = ""
    ) -> list[StoredChunk]:
        """The top_k rows whose metadata equal every filter: nearest `query` first, or with
        `text`, the query's words, in the fused order of the nearest and the BM25 best."""
        mask = self.candidates(filters)
        if text:
            depth = max(top_k, FUSION_DEPTH)
            bm25 = self.lexicon.scores(text, mask)
            matched = np.flatnonzero(bm25)
            rankings = [self.nearest(query, depth, mask), matched[top(bm25[matched], depth)]]
            rows = np.array(fusion.rrf([r.tolist() for r in rankings])[:top_k], dtype=np.int64)
        else:
            rows = self.nearest(query, top_k, mask)
        scores = _scores(self.vectors[rows], query)
        return [
            replace(self.rows[row], score=min(score, 1.0), metadata=dict(self.rows[row].metadata))
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True)
        ]

    @property
    def nbytes(self) -> int:
        """The numpy arrays' and the BM25 index's bytes; the rows' Python objects (text and
        all) come on top."""
        columns = [self.vectors, self.lists, *self.values.values()]
        centroids = 0 if self.centroids is None else self.centroids.nbytes
        return sum(int(c.nbytes) for c in columns) + centroids + self.lexicon.nbytes


def _scores(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Inner products. einsum runs on one core in numpy's own loop; a BLAS gemv spread over
    busy cores was measured up to ten times slower on this machine."""
    return np.einsum("ij,j->i", vectors, query)


class HotIndex:
    """Every tenant's partition; the caller keeps it equal to Milvus (hot_store.py)."""

    def __init__(self, dim: int, partitions: dict[str, Partition] | None = None) -> None:
        self._dim = dim
        self._tenants: dict[str, Partition] = partitions or {}

    @property
    def partitions(self) -> dict[str, Partition]:
        """Each tenant's partition, by tenant: to read, not to change."""
        return self._tenants

    def add(self, tenant: str, rows: list[StoredChunk], vectors: np.ndarray) -> None:
        """Adds rows as they are (a load); `train` clusters them after."""
        self._tenants.setdefault(tenant, Partition(self._dim)).add(rows, vectors)

    def replace_document(self, tenant: str, rows: list[StoredChunk], vectors: np.ndarray) -> None:
        """The document's rows (all of one document) become these, as in Milvus."""
        if not rows:
            return
        self.delete_document(tenant, rows[0].document_id)
        self.add(tenant, rows, vectors)
        self._tenants[tenant].train()

    def delete_document(self, tenant: str, document_id: str) -> None:
        partition = self._tenants.get(tenant)
        if partition is None:
            return
        partition.remove(document_id)
        if partition.size == 0:
            del self._tenants[tenant]
        else:
            partition.train()

    def train(self) -> None:
        """After a load: clusters each tenant's rows, and frees the room grown beyond them."""
        for partition in self._tenants.values():
            partition.trim()
            partition.train(force=True)

    def search(
        self, tenant: str, vector: np.ndarray, top_k: int, filters: dict[str, str], text: str = ""
    ) -> list[StoredChunk]:
        """Partition.search in the tenant's partition; none of another's rows."""
        partition = self._tenants.get(tenant)
        if partition is None:
            return []
        return partition.search(unit(vector), top_k, filters, text)

    @property
    def rows(self) -> int:
        return sum(p.size for p in self._tenants.values())

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._tenants.values())

    def footprint(self) -> int:
        """Bytes of the arrays and the row objects, each shared object counted once; O(rows)."""
        seen: set[int] = set()
        total = self.nbytes

        def size(value: object) -> int:
            if id(value) in seen:
                return 0
            seen.add(id(value))
            return sys.getsizeof(value)

        for partition in self._tenants.values():
            total += size(partition.rows) + size(partition.documents)
            for row in partition.rows:
                total += size(row) + size(row.__dict__) + size(row.text) + size(row.title)
                total += size(row.document_id) + size(row.metadata) + size(row.heading)
            total += sum(size(rows) for rows in partition.documents.values())
        return total
