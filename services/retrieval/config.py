"""The retrieval plane's config: one frozen dataclass, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import require


@dataclass(frozen=True, kw_only=True)
class RetrievalConfig:
    host: str = "127.0.0.1"
    port: int = 50052
    # Prometheus metrics on 127.0.0.1; 0 turns them off.
    metrics_port: int = 9465
    region: str = "local"
    # The governance point, which alone accepts writes and versions the corpus; empty means
    # this retrieval is it. A replica pulls the corpus log from it and applies it locally.
    primary_target: str = ""
    # The corpus log (SQLite): every acknowledged write, durable before it is acknowledged.
    corpus_log: str = "data/corpus-log.db"
    replication_interval_s: float = 0.5
    # A Milvus Lite file (the embedded default) or any Milvus URI (http://host:19530, Zilliz).
    milvus_uri: str = "data/milvus.db"
    milvus_token: str = ""
    collection: str = "ragmesh_chunks"
    # Search an in-process copy of the chunk rows (services/retrieval/hot_index.py), loaded
    # from Milvus at start; Milvus stays the store of record (docs/retrieval.md). About 2.5 KiB
    # a chunk (384 float32s, text, metadata): 242 MiB at 100k chunks. Off: every search goes
    # to Milvus, for a Milvus server other programs write to or a corpus too big for memory.
    hot_index: bool = True
    triton_target: str = "127.0.0.1:8001"
    embedder_model: str = "embedder"
    embedding_dim: int = 384
    # Chunks of about this many words, each repeating the last `overlap_words` of the previous.
    chunk_words: int = 120
    overlap_words: int = 30
    # Texts per embedder request (the model's max_batch_size bounds it).
    embed_batch: int = 32
    embed_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        require(0 <= self.port < 65536, "retrieval.port", "must be 0..65535")
        require(bool(self.milvus_uri), "retrieval.milvus_uri", "must not be empty")
        require(bool(self.corpus_log), "retrieval.corpus_log", "must not be empty")
        require(isinstance(self.hot_index, bool), "retrieval.hot_index", "must be true or false")
        require(
            self.replication_interval_s > 0, "retrieval.replication_interval_s", "must be positive"
        )
        require(self.embedding_dim > 0, "retrieval.embedding_dim", "must be positive")
        require(self.chunk_words >= 10, "retrieval.chunk_words", "must be at least 10")
        require(
            0 <= self.overlap_words < self.chunk_words,
            "retrieval.overlap_words",
            "must be 0..chunk_words-1",
        )
        require(1 <= self.embed_batch <= 64, "retrieval.embed_batch", "must be 1..64")
