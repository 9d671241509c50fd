"""Retrieval alone, dense against hybrid, side by side on one mesh (`--retrieval`).

Every answerable question of each set is searched through retrieval's own API as the key's
tenant, `SearchRequest.hybrid` false (dense: by vector alone) and true (hybrid: vector and
BM25, fused), DEPTH chunks each. A question's rank is that of the first chunk from one of its
source documents, as for the tiers' recall@k (loadtest/eval/asking.py); 0: none in the top
DEPTH. Its fact rank is that of the first chunk holding one of its key facts (scoring.has_fact):
the stricter test, since a document holds many chunks. Per set and mode: recall@1, @3 and @5,
fact@1 and @3 (the same over fact ranks), the mean reciprocal rank over the top DEPTH, and the
p50 of a Search call's time seen by this client. Every question is first searched
once, so that the embedder's response cache holds every query: the timed calls then differ
by the search alone. Modes alternate question by question over PASSES passes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import grpc
from ragmesh.retrieval.v1 import retrieval_pb2 as pb
from ragmesh.retrieval.v1 import retrieval_pb2_grpc

from loadtest.eval.questions import Question
from loadtest.eval.scoring import facts_found
from loadtest.latency import percentile
from services.common.serving import CHANNEL_OPTIONS

MODES = {"dense": False, "hybrid": True}
DEPTH = 10
PASSES = 3
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Ranked:
    set: str
    mode: str
    id: str
    rank: int  # 1-based; 0: no source document in the top DEPTH
    fact_rank: int  # 1-based; 0: no chunk with a key fact in the top DEPTH
    ms: list[float]  # each timed call


@dataclass(frozen=True)
class Summary:
    set: str
    mode: str
    questions: int
    recall_at_1: float
    recall_at_3: float
    recall_at_5: float
    fact_at_1: float
    fact_at_3: float
    mrr: float
    p50_ms: float


class Searcher:
    """Search calls to one retrieval as one tenant."""

    def __init__(self, target: str, tenant: str) -> None:
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = retrieval_pb2_grpc.RetrievalStub(self._channel)
        self._tenant = tenant

    def rank(self, question: Question, hybrid: bool) -> tuple[int, int, float]:
        """The question's rank, its fact rank and the call's time in ms."""
        request = pb.SearchRequest(
            tenant=self._tenant, query=question.question, top_k=DEPTH, hybrid=hybrid
        )
        started = time.perf_counter()
        reply = self._stub.Search(request, timeout=TIMEOUT_S)
        ms = (time.perf_counter() - started) * 1000
        sources = set(question.documents)
        found = (i for i, c in enumerate(reply.chunks, 1) if c.document_id in sources)
        facts = (
            i for i, c in enumerate(reply.chunks, 1) if facts_found(c.text, question.key_facts)
        )
        return next(found, 0), next(facts, 0), ms

    def close(self) -> None:
        self._channel.close()


def measure(searcher: Searcher, sets: dict[str, list[Question]]) -> list[Ranked]:
    """Every answerable question of every set in every mode."""
    asked = {name: [q for q in questions if q.answerable] for name, questions in sets.items()}
    for questions in asked.values():
        for question in questions:
            searcher.rank(question, False)  # fills the embedder's response cache
    ranks: dict[tuple[str, str, str], tuple[int, int]] = {}
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(PASSES):
        for name, questions in asked.items():
            for question in questions:
                for mode, hybrid in MODES.items():
                    key = (name, mode, question.id)
                    doc, fact, ms = searcher.rank(question, hybrid)
                    ranks[key] = (doc, fact)
                    times.setdefault(key, []).append(ms)
    return [Ranked(*key, *rank, times[key]) for key, rank in ranks.items()]


def summarise(rows: list[Ranked]) -> list[Summary]:
    """One Summary per set and mode, in the order first seen."""
    groups: dict[tuple[str, str], list[Ranked]] = {}
    for row in rows:
        groups.setdefault((row.set, row.mode), []).append(row)
    summaries = []
    for (name, mode), group in groups.items():
        ranks = [r.rank for r in group]
        recall = {k: sum(0 < r <= k for r in ranks) / len(ranks) for k in (1, 3, 5)}
        fact = {k: sum(0 < r.fact_rank <= k for r in group) / len(group) for k in (1, 3)}
        summaries.append(
            Summary(
                set=name,
                mode=mode,
                questions=len(group),
                recall_at_1=recall[1],
                recall_at_3=recall[3],
                recall_at_5=recall[5],
                fact_at_1=fact[1],
                fact_at_3=fact[3],
                mrr=statistics.fmean(1 / r if r else 0.0 for r in ranks),
                p50_ms=percentile([ms for r in group for ms in r.ms], 0.5),
            )
        )
    return summaries


def table(summaries: list[Summary]) -> str:
    head = f"{'set':12} {'mode':8} {'questions':>9} " + " ".join(
        f"{name:>9}" for name in ("recall@1", "recall@3", "recall@5")
    )
    lines = [head + f" {'fact@1':>7} {'fact@3':>7} {f'MRR@{DEPTH}':>9} {'p50 ms':>8}"]
    for s in summaries:
        lines.append(
            f"{s.set:12} {s.mode:8} {s.questions:>9} {s.recall_at_1:>9.3f} {s.recall_at_3:>9.3f} "
            f"{s.recall_at_5:>9.3f} {s.fact_at_1:>7.3f} {s.fact_at_3:>7.3f} {s.mrr:>9.3f} "
            f"{s.p50_ms:>8.1f}"
        )
    return "\n".join(lines)
