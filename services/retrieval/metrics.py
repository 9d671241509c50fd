"""The retrieval plane's own Prometheus metrics (the per-call ones are common/metrics.py's)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REJECTED_WRITES = Counter(
    "ragmesh_retrieval_rejected_writes_total",
    "Corpus log entries the governance point's store refused for good (rejected, skipped)",
)

FLAGGED_CHUNKS = Counter(
    "ragmesh_ingest_chunks_flagged_total",
    "Chunks the ingest scan found injected instructions in, by the rule that matched "
    "(services/guardrails/injection.py); stored and served with the verdict",
    ["rule"],
)

HOT_INDEX_LOAD = Gauge(
    "ragmesh_retrieval_hot_index_load_seconds",
    "How long the hot index's last load took at start, by where it came from: its snapshot "
    "(services/retrieval/hot_snapshot.py) or every row read from Milvus",
    ["source"],
)
