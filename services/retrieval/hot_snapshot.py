"""The hot index on disk, so that a start need not read every row back from Milvus.

Reading 100k chunk rows from Milvus Lite and indexing them again (BM25 above all) took
29 s at start (`make bench-retrieval`); reading this snapshot takes a fraction of that. It
holds the index as it was, nothing recomputed: each tenant's rows in order, their unit
vectors and clusters, the centroids and the BM25 postings. The files are Apache Arrow IPC
(pyarrow, already installed with pymilvus): a documented columnar format, read through a
memory map, that runs no code when read (as a pickle would) and that pandas or DuckDB open.

A directory, `retrieval.hot_snapshot`:
- `rows.arrow`: every row, tenant after tenant, in each partition's order: tenant,
  document_id, chunk_index, title, text, metadata (JSON), injection, page, heading, vector
  (fixed_size_list<float32>[dim], unit length), cluster (int32), terms (int32, BM25 length).
- `postings.arrow`: tenant, term, rows (list<int32>), counts (list<uint16>).
- `centroids.arrow`: tenant, centroid (fixed_size_list<float32>[dim]).
- `manifest.json`, written last: FORMAT, the Milvus collection, dim, every tenant's corpus
  version as Milvus held it, and each tenant's rows and trained_rows, in the files' order.

`read` returns an index only when the manifest names this collection and dim and the very
corpus versions Milvus holds now; else None, and the caller loads from Milvus. The caller
also `drop`s the snapshot before its first write after a save, so a snapshot on disk always
equals Milvus's rows (a refused write changes rows without a new version).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from services.retrieval.hot_index import HotIndex, Partition
from services.retrieval.lexical import Lexicon, row_text, terms
from services.retrieval.store import StoredChunk

LOGGER = logging.getLogger(__name__)
# Raised when the files' layout, or how a row is derived from Milvus's, changes.
FORMAT = 1
MANIFEST = "manifest.json"
FILES = ("rows.arrow", "postings.arrow", "centroids.arrow")
# Terms of up to this many rows a partition are counted again when a snapshot is read: a
# snapshot whose BM25 terms another analyzer counted (services/retrieval/lexical.py) is
# refused, as its postings would not match the rows' terms at the next write.
TERMS_CHECKED = 64
_STRINGS = ("document_id", "title", "text", "injection", "heading")
_INTS = ("chunk_index", "page")


@dataclass(frozen=True)
class Stamp:
    """What a snapshot must match to be loaded: Milvus's collection, the vectors' dim and
    every tenant's corpus version."""

    collection: str
    dim: int
    versions: dict[str, int]


def save(index: HotIndex, stamp: Stamp, path: Path) -> None:
    """Writes `index` as `path` (a directory): into a sibling first, then renamed, so a
    crash leaves the old snapshot, none, or this one. Raises OSError, also when `path` holds
    anything but a snapshot (which is left as it is)."""
    partitions = index.partitions
    work = path.with_name(f"{path.name}.tmp")
    drop(work)
    work.mkdir(parents=True)
    _write(work / "rows.arrow", _rows_table(partitions, stamp.dim))
    _write(work / "postings.arrow", _postings_table(partitions))
    _write(work / "centroids.arrow", _centroids_table(partitions, stamp.dim))
    manifest = {
        "format": FORMAT,
        "collection": stamp.collection,
        "dim": stamp.dim,
        "versions": stamp.versions,
        "tenants": {
            t: {"rows": p.size, "trained_rows": p.trained_rows} for t, p in partitions.items()
        },
    }
    (work / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    drop(path)
    try:
        os.replace(work, path)  # refused while `path` holds anything else
    except OSError:
        drop(work)
        raise


def drop(path: Path) -> None:
    """Removes the snapshot: its manifest first, so a half-removed one is never read, then
    its files, then the directory if nothing else is in it; never anything else. Raises
    OSError when a manifest may be there and cannot be removed (the write that called for
    it fails rather than leave a snapshot that no longer equals Milvus)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        (path / MANIFEST).unlink()
    for name in FILES:
        with contextlib.suppress(OSError):
            (path / name).unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def read(path: Path, stamp: Stamp) -> HotIndex | None:
    """The index saved at `path` if it matches `stamp`; None (and why, logged) if there is
    none, it does not match, or it cannot be read."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        LOGGER.warning("hot index snapshot: unreadable manifest (%s); loading from Milvus", exc)
        return None
    if not isinstance(manifest, dict):
        LOGGER.warning("hot index snapshot: unreadable manifest; loading from Milvus")
        return None
    saved = (manifest.get("collection"), manifest.get("dim"), manifest.get("versions"))
    if manifest.get("format") != FORMAT or saved != astuple(stamp):
        LOGGER.info(
            "hot index snapshot: older than Milvus's corpus (or another); loading from Milvus"
        )
        return None
    try:
        return _index(path, manifest["tenants"], stamp.dim)
    except Exception as exc:  # whatever a damaged file raises: Milvus has every row
        LOGGER.warning("hot index snapshot: cannot read it (%r); loading from Milvus", exc)
        return None


def _write(file: Path, table: pa.Table) -> None:
    with pa.OSFile(str(file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read(file: Path) -> pa.Table:
    with pa.memory_map(str(file)) as source:
        return pa.ipc.open_file(source).read_all()


def _vectors(rows: np.ndarray, dim: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(rows, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def _rows_table(partitions: dict[str, Partition], dim: int) -> pa.Table:
    rows = [(t, r) for t, p in partitions.items() for r in p.rows]
    sized = list(partitions.values())
    columns: dict[str, Any] = {
        "tenant": pa.array([t for t, _ in rows], pa.string()),
        **{name: pa.array([getattr(r, name) for _, r in rows], pa.string()) for name in _STRINGS},
        "chunk_index": pa.array([r.chunk_index for _, r in rows], pa.int32()),
        "page": pa.array([r.page for _, r in rows], pa.int32()),
        "metadata": pa.array([json.dumps(r.metadata) for _, r in rows], pa.string()),
        "vector": _vectors(_stacked([p.vectors[: p.size] for p in sized], (0, dim)), dim),
        "cluster": pa.array(_stacked([p.lists[: p.size] for p in sized], (0,)), pa.int32()),
        "terms": pa.array(_stacked([p.lexicon.lengths for p in sized], (0,)), pa.int32()),
    }
    return pa.table(columns)


def _stacked(parts: list[np.ndarray], empty: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(empty)


def _postings_table(partitions: dict[str, Partition]) -> pa.Table:
    tenants, terms, rows, counts = [], [], [], []
    for tenant, partition in partitions.items():
        for term, held, count in partition.lexicon.postings():
            tenants.append(tenant)
            terms.append(term)
            rows.append(held)
            counts.append(count)
    return pa.table(
        {
            "tenant": pa.array(tenants, pa.string()),
            "term": pa.array(terms, pa.string()),
            "rows": _lists(rows, pa.int32()),
            "counts": _lists(counts, pa.uint16()),
        }
    )


def _lists(parts: list[np.ndarray], kind: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(_stacked(parts, (0,)), kind))


def _centroids_table(partitions: dict[str, Partition], dim: int) -> pa.Table:
    trained = [(t, p.centroids) for t, p in partitions.items() if p.centroids is not None]
    return pa.table(
        {
            "tenant": pa.array([t for t, c in trained for _ in c], pa.string()),
            "centroid": _vectors(_stacked([c for _, c in trained], (0, dim)), dim),
        }
    )


def _index(path: Path, tenants: dict[str, dict[str, int]], dim: int) -> HotIndex:
    rows, postings = _read(path / "rows.arrow"), _read(path / "postings.arrow")
    centroids = _read(path / "centroids.arrow")
    if rows.num_rows != sum(t["rows"] for t in tenants.values()):
        raise ValueError(f"{rows.num_rows} rows, the manifest says otherwise")
    by_tenant = _grouped(postings)
    centroid_of = _grouped(centroids)
    partitions, start = {}, 0
    for tenant, counts in tenants.items():
        block = rows.slice(start, counts["rows"])
        start += counts["rows"]
        lengths = block.column("terms").to_numpy()
        chunks = _chunks(block)
        _check_terms(chunks, lengths)
        held = by_tenant.get(tenant)
        lexicon = Lexicon.restore(lengths, [] if held is None else _postings(held))
        trained = centroid_of.get(tenant)
        partitions[tenant] = Partition.restore(
            chunks,
            _matrix(block.column("vector"), dim),
            block.column("cluster").to_numpy(),
            None if trained is None else _matrix(trained.column("centroid"), dim).copy(),
            int(counts["trained_rows"]),
            lexicon,
        )
    return HotIndex(dim, partitions)


def _check_terms(chunks: list[StoredChunk], lengths: np.ndarray) -> None:
    """Counts the terms of up to TERMS_CHECKED rows again; raises ValueError on a
    difference."""
    for i in range(0, len(chunks), max(1, len(chunks) // TERMS_CHECKED)):
        if len(terms(row_text(chunks[i].title, chunks[i].text))) != lengths[i]:
            raise ValueError("its BM25 terms were counted by another analyzer")


def _grouped(table: pa.Table) -> dict[str, pa.Table]:
    """The table's rows of each tenant; a tenant's rows are consecutive."""
    tenants = table.column("tenant").to_pylist()
    groups, start = {}, 0
    for i in range(1, len(tenants) + 1):
        if i == len(tenants) or tenants[i] != tenants[start]:
            groups[tenants[start]] = table.slice(start, i - start)
            start = i
    return groups


def _matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim)


def _postings(table: pa.Table) -> list[tuple[str, bytes, bytes]]:
    rows, counts = table.column("rows").combine_chunks(), table.column("counts").combine_chunks()
    offsets = rows.offsets.to_numpy()
    held = rows.values.to_numpy().astype(np.intc)
    count = counts.values.to_numpy()
    return [
        (term, held[a:b].tobytes(), count[a:b].tobytes())
        for term, a, b in zip(
            table.column("term").to_pylist(), offsets[:-1], offsets[1:], strict=True
        )
    ]


def _chunks(block: pa.Table) -> list[StoredChunk]:
    """The rows as StoredChunks; equal titles, headings and metadata share one object, as
    a load from Milvus shares them (services/retrieval/hot_store.py)."""
    columns = {name: block.column(name).to_pylist() for name in (*_STRINGS, *_INTS, "metadata")}
    strings: dict[str, str] = {}
    metadata: dict[str, dict[str, str]] = {}
    for m in set(columns["metadata"]):
        metadata[m] = json.loads(m)
    return [
        StoredChunk(
            document_id,
            chunk_index,
            0.0,
            text,
            strings.setdefault(title, title),
            metadata[meta],
            injection,
            page,
            strings.setdefault(heading, heading),
        )
        for document_id, chunk_index, text, title, meta, injection, page, heading in zip(
            columns["document_id"],
            columns["chunk_index"],
            columns["text"],
            columns["title"],
            columns["metadata"],
            columns["injection"],
            columns["page"],
            columns["heading"],
            strict=True,
        )
    ]
