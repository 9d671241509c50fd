"""Retrieval search at size: Milvus Lite alone and the hot index, side by side.

    python -m loadtest.bench_retrieval [--sizes 10000,100000] [--queries 500]

For each size, writes synthetic chunks through the real MilvusStore into a fresh Milvus Lite
file, then times top-10 searches on Milvus alone (`hot_index: false`) and through HotStore
(`hot_index: true`: the in-process index, loaded from Milvus), by vector and hybrid (vector
and BM25, fused), and scores the searches by vector against exact search done here with numpy
(a hybrid search ranks otherwise by design: `make eval EVAL_ARGS=--retrieval` scores it).

Embedding 100k texts through Triton would take hours on this machine, so the vectors are
made up but shaped like a corpus: unit vectors of the embedder's dimension (384) clustered
in areas, topics and documents of 8 chunks; queries are chunks moved off their place. A
chunk's text is 90 words drawn from a vocabulary of 20,000 by Zipf's law (the i-th most
frequent word with probability proportional to 1/i, as in English text); a query's words
are 4 of its chunk's. Three tenants hold 80, 15 and 5% of the chunks (queries likewise),
every document has `lang` and `source` metadata, and a quarter of the queries filter on
one of them. Milvus Lite takes
about half a second a search at 100k, so it gets `--milvus-queries` of the queries.
Load time is Milvus's ingest (writes, then flush) and, for the hot index, its load at start:
from Milvus, then from the snapshot it saved (services/retrieval/hot_snapshot.py), searched
again with the same queries. Memory: for Milvus Lite (in this process), the resident growth
over the ingest; for the hot index, its arrays and row objects (HotIndex.footprint), on top.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.latency import percentile
from loadtest.procfs import rss_mib
from services.retrieval import hot_snapshot
from services.retrieval.hot_index import unit
from services.retrieval.hot_snapshot import Stamp
from services.retrieval.hot_store import HotStore
from services.retrieval.store import DocumentRows, MilvusStore, StoredChunk

DIM = 384
CHUNKS_PER_DOCUMENT = 8
TENANTS = (("acme", 0.80), ("globex", 0.15), ("initech", 0.05))
METADATA = {"lang": ("en", "de", "fr"), "source": ("handbook", "tickets", "wiki")}
FILTERED = 0.25
WRITE_BATCH = 256  # documents per Milvus upsert
VOCABULARY = 20_000
CHUNK_WORDS = 90
QUERY_WORDS = 4


@dataclass
class Corpus:
    vectors: np.ndarray  # (chunks, DIM), unit rows; chunk i belongs to document i // 8
    words: np.ndarray  # (chunks, CHUNK_WORDS), word numbers
    tenants: np.ndarray  # tenant index of each document
    metadata: list[dict[str, str]]  # of each document


@dataclass
class Query:
    tenant: str
    vector: np.ndarray
    filters: dict[str, str]
    truth: set[tuple[str, int]]  # exact top 10: (document id, chunk index)
    text: str  # a hybrid search's words


Search = Callable[[Query, int], list[StoredChunk]]


@dataclass
class Row:
    design: str
    chunks: int
    load_s: float
    p50_ms: float
    p99_ms: float
    recall: float | None  # None: hybrid, not scored against the vectors' exact ranking
    memory: str


def make_corpus(chunks: int, rng: np.random.Generator) -> Corpus:
    documents = chunks // CHUNKS_PER_DOCUMENT
    areas = unit(rng.standard_normal((20, DIM)))
    topics = unit(areas[rng.integers(0, 20, 1000)] + 0.9 * unit(rng.standard_normal((1000, DIM))))
    centers = topics[rng.integers(0, 1000, documents)]
    centers = unit(centers + 0.7 * unit(rng.standard_normal((documents, DIM))))
    noise = unit(rng.standard_normal((documents * CHUNKS_PER_DOCUMENT, DIM)))
    vectors = unit(np.repeat(centers, CHUNKS_PER_DOCUMENT, axis=0) + 0.5 * noise)
    shares = [share for _, share in TENANTS]
    zipf = 1 / np.arange(1, VOCABULARY + 1)
    return Corpus(
        vectors=vectors,
        words=rng.choice(VOCABULARY, (len(vectors), CHUNK_WORDS), p=zipf / zipf.sum()),
        tenants=rng.choice(len(TENANTS), documents, p=shares),
        metadata=[
            {key: values[rng.integers(len(values))] for key, values in METADATA.items()}
            for _ in range(documents)
        ],
    )


def document_id(document: int) -> str:
    return f"doc-{document:06d}"


def text(words: np.ndarray) -> str:
    return " ".join(f"w{w}" for w in words.tolist())


def ingest(store: MilvusStore, corpus: Corpus) -> float:
    """Writes every document as version 1, a batch of documents per call; returns seconds."""
    started = time.perf_counter()
    for t, (tenant, _) in enumerate(TENANTS):
        owned = np.flatnonzero(corpus.tenants == t)
        for start in range(0, len(owned), WRITE_BATCH):
            batch = [
                DocumentRows(
                    document_id=document_id(d),
                    title=f"Document {d}",
                    metadata=corpus.metadata[d],
                    chunks=[
                        text(corpus.words[d * CHUNKS_PER_DOCUMENT + i])
                        for i in range(CHUNKS_PER_DOCUMENT)
                    ],
                    vectors=corpus.vectors[d * CHUNKS_PER_DOCUMENT : (d + 1) * CHUNKS_PER_DOCUMENT],
                )
                for d in owned[start : start + WRITE_BATCH].tolist()
            ]
            store.replace_documents(tenant, batch, 1)
        print(f"  {tenant}: {len(owned) * CHUNKS_PER_DOCUMENT} chunks written", flush=True)
    store.flush()
    return time.perf_counter() - started


def make_queries(corpus: Corpus, count: int, rng: np.random.Generator) -> list[Query]:
    queries = []
    chunk_tenants = np.repeat(corpus.tenants, CHUNKS_PER_DOCUMENT)
    for _ in range(count):
        anchor = int(rng.integers(len(corpus.vectors)))
        document = anchor // CHUNKS_PER_DOCUMENT
        vector = unit(corpus.vectors[anchor] + 0.6 * unit(rng.standard_normal(DIM)))
        filters: dict[str, str] = {}
        if rng.random() < FILTERED:
            key = str(rng.choice(list(METADATA)))
            filters[key] = corpus.metadata[document][key]
        allowed = chunk_tenants == corpus.tenants[document]
        for key, value in filters.items():
            matches = np.array([m.get(key) == value for m in corpus.metadata])
            allowed &= np.repeat(matches, CHUNKS_PER_DOCUMENT)
        rows = np.flatnonzero(allowed)
        best = rows[np.argsort(-(corpus.vectors[rows] @ vector))[:10]]
        truth = {(document_id(r // CHUNKS_PER_DOCUMENT), r % CHUNKS_PER_DOCUMENT) for r in best}
        tenant = TENANTS[corpus.tenants[document]][0]
        words = text(rng.choice(corpus.words[anchor], QUERY_WORDS, replace=False))
        queries.append(Query(tenant, vector, filters, truth, words))
    return queries


def measure(search: Search, queries: list[Query]) -> tuple[float, float, float]:
    """Search p50 and p99 in ms, and mean recall@10 against exact search."""
    for q in queries[:5]:  # warm-up
        search(q, 10)
    samples, recalls = [], []
    for q in queries:
        started = time.perf_counter()
        found = search(q, 10)
        samples.append((time.perf_counter() - started) * 1000)
        got = {(c.document_id, c.chunk_index) for c in found}
        recalls.append(len(got & q.truth) / len(q.truth))
    return percentile(samples, 0.5), percentile(samples, 0.99), float(np.mean(recalls))


def run_size(chunks: int, queries: int, milvus_queries: int, work: Path) -> list[Row]:
    rng = np.random.default_rng(chunks)
    print(f"{chunks} chunks: making the corpus and {queries} queries", flush=True)
    corpus = make_corpus(chunks, rng)
    asked = make_queries(corpus, queries, rng)
    rss_before = rss_mib()
    store = MilvusStore(str(work / f"milvus-{chunks}.db"), "", "bench", DIM)
    try:
        ingest_s = ingest(store, corpus)
        rss_milvus = rss_mib()
        print(f"  written and flushed in {ingest_s:.1f} s; Milvus Lite alone searches", flush=True)
        milvus = measure(
            lambda q, k: store.search(q.tenant, q.vector, k, q.filters), asked[:milvus_queries]
        )
        print("  loading the hot index from Milvus", flush=True)
        hot = HotStore(store, DIM)
        started = time.perf_counter()
        hot.load()
        load_s = time.perf_counter() - started
        assert hot.index is not None
        arrays_mib, index_mib = hot.index.nbytes / 2**20, hot.index.footprint() / 2**20
        print(f"  loaded {hot.index.rows} rows in {load_s:.1f} s; hot index searches", flush=True)
        fast = measure(lambda q, k: hot.search(q.tenant, q.vector, k, q.filters), asked)
        hybrid = measure(lambda q, k: hot.search(q.tenant, q.vector, k, q.filters, q.text), asked)
        path = work / f"hot-{chunks}"
        started = time.perf_counter()
        hot_snapshot.save(hot.index, Stamp(store.collection, DIM, store.versions()), path)
        save_s = time.perf_counter() - started
        print(f"  snapshot saved in {save_s:.1f} s; loading the hot index from it", flush=True)
        restored = HotStore(store, DIM, path)
        started = time.perf_counter()
        restored.load()
        snapshot_s = time.perf_counter() - started
        assert restored.loaded_from == "snapshot"
        again = measure(lambda q, k: restored.search(q.tenant, q.vector, k, q.filters), asked)
    finally:
        store.close()
    return [
        Row("milvus-lite", chunks, ingest_s, *milvus, f"RSS +{rss_milvus - rss_before:.0f} MiB"),
        Row(
            "hot-index",
            chunks,
            load_s,
            *fast,
            f"{index_mib:.0f} MiB, of which vectors, filter columns and BM25 {arrays_mib:.0f} MiB",
        ),
        Row("hot-hybrid", chunks, load_s, *hybrid[:2], None, "the same index"),
        Row(
            "hot-snapshot",
            chunks,
            snapshot_s,
            *again,
            f"the same index, read from its snapshot ({_mib(path):.0f} MiB on disk, "
            f"saved in {save_s:.1f} s)",
        ),
    ]


def _mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_retrieval")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--milvus-queries", type=int, default=100)
    args = parser.parse_args()
    logging.getLogger("pymilvus").setLevel(logging.ERROR)  # query_iterator warns on Milvus Lite
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            rows += run_size(size, args.queries, min(args.milvus_queries, args.queries), Path(tmp))
    print()
    heads = ("chunks", "load s", "p50 ms", "p99 ms", "recall@10")
    print(f"{'design':12} " + " ".join(f"{h:>9}" for h in heads) + "  memory")
    for r in rows:
        recall = "-" if r.recall is None else f"{r.recall:.3f}"
        print(
            f"{r.design:12} {r.chunks:>9} {r.load_s:>9.1f} {r.p50_ms:>9.1f} {r.p99_ms:>9.1f} "
            f"{recall:>9}  {r.memory}"
        )
    print(
        "load s: milvus-lite = writing the chunks and flushing; hot-index = its load from "
        "Milvus at start; hot-snapshot = its load from its snapshot at start. Search: top_k "
        "10, one at a time; Milvus Lite alone: the first "
        f"{args.milvus_queries} queries."
    )


if __name__ == "__main__":
    main()
