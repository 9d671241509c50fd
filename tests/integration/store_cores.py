"""Retrieval cores on the real Milvus Lite, with a stand-in embedder: for tests about the
store and the corpus log, not about embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.config.retrieval import RetrievalConfig
from services.retrieval.core import RetrievalCore
from services.retrieval.corpus_log import CorpusLog
from services.retrieval.store import MilvusStore

DIM = 16


class Embedder:
    """Every text the same unit vector."""

    async def embed(self, texts, timeout_s):
        return np.ones((len(texts), DIM), dtype=np.float32) / np.sqrt(DIM)

    async def close(self):
        pass


def core(tmp_path: Path, name: str, hot: bool, primary: str = "") -> RetrievalCore:
    """A core whose Milvus file, corpus log and snapshot are `name`'s under `tmp_path`: a
    second core of the same name is the first one restarted."""
    config = RetrievalConfig(
        milvus_uri=str(tmp_path / f"{name}.db"),
        corpus_log=str(tmp_path / f"{name}-log.db"),
        hot_snapshot=str(tmp_path / f"{name}-hot"),
        embedding_dim=DIM,
        hot_index=hot,
        hybrid=hot,
        primary_target=primary,
    )
    store = MilvusStore(config.milvus_uri, "", config.collection, DIM)
    return RetrievalCore(config, store, Embedder(), CorpusLog(config.corpus_log))
