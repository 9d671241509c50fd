"""Asks the evaluation set through the edge and scores each answer: one Row per question and
tier.

Per question, one Search (the chunks retrieval ranks first: recall@k, and the text of the
chunks an answer cites), then per tier one GenerateStream with the same `top_k`, the answer
cache skipped, timed to its first `token` message and to its end. One request at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.eval import scoring
from loadtest.eval.questions import Question
from services.common.serving import CHANNEL_OPTIONS

GROUNDEDNESS = "groundedness"


@dataclass(frozen=True)
class Retrieved:
    """What a Search found for a question: the documents of its top-k chunks, best first, and
    each chunk's document and text."""

    documents: list[str]
    chunks: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class Asked:
    """One GenerateStream call: its final message, the answer's text, the time to its first
    token (None: no token came) and to its end, and its status ("" when it succeeded)."""

    final: pb.GenerateResponse
    answer: str
    ttft_ms: float | None
    total_ms: float
    error: str


@dataclass(frozen=True)
class Row:
    tier: str
    id: str
    style: str
    answerable: bool
    rank: int  # 1-based rank of the first chunk from a source document; 0: none in the top k
    correct: bool | None  # every key fact present; None for an unanswerable question
    facts_found: int
    facts: int
    refused: bool
    looped: bool
    citations: int
    citations_relevant: int
    groundedness: float | None  # the gateway's score; None when it gave none
    finish_reason: str
    ttft_ms: float | None  # None: no token came
    total_ms: float
    answered_by: str  # the tier that answered ("" on an error)
    degraded_reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str  # a gRPC status name, "" when the call succeeded
    answer: str


class Asker:
    """Search and GenerateStream calls through the edge with one key, on one channel."""

    def __init__(self, target: str, key: str, timeout_s: float, top_k: int) -> None:
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = (("x-api-key", key),)
        self._timeout_s = timeout_s
        self.top_k = top_k

    def search(self, question: Question) -> Retrieved:
        reply = self._stub.Search(
            pb.SearchRequest(query=question.question, top_k=self.top_k),
            metadata=self._metadata,
            timeout=self._timeout_s,
        )
        chunks = {h.chunk_id: (h.document_id, h.text) for h in reply.hits}
        return Retrieved([h.document_id for h in reply.hits], chunks)

    def generate(self, question: Question, tier: str, max_tokens: int) -> Asked:
        request = pb.GenerateRequest(
            query=question.question,
            tier=tier,
            top_k=self.top_k,
            max_tokens=max_tokens,
            bypass_cache=True,
        )
        started = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        final = pb.GenerateResponse()
        error = ""
        try:
            for event in self._stub.GenerateStream(
                request, metadata=self._metadata, timeout=self._timeout_s
            ):
                if event.HasField("token") and event.token:
                    first = first if first is not None else time.perf_counter() - started
                    parts.append(event.token)
                elif event.HasField("final"):
                    final = event.final
        except grpc.RpcError as exc:
            error = exc.code().name
        total_ms = (time.perf_counter() - started) * 1000
        ttft_ms = None if first is None else first * 1000
        return Asked(final, final.answer or "".join(parts), ttft_ms, total_ms, error)

    def close(self) -> None:
        self._channel.close()


def score(question: Question, tier: str, retrieved: Retrieved, asked: Asked) -> Row:
    final, answer = asked.final, asked.answer
    sources = set(question.documents)
    rank = next((i for i, d in enumerate(retrieved.documents, 1) if d in sources), 0)
    found = scoring.facts_found(answer, question.key_facts)
    relevant = 0
    for citation in final.citations:
        document, text = retrieved.chunks.get(
            citation.chunk_id, (citation.document_id, citation.snippet)
        )
        relevant += scoring.citation_relevant(document, text, sources, question.key_facts)
    grounded = next(
        (g.score for g in final.guardrails if g.check == GROUNDEDNESS and g.HasField("score")),
        None,
    )
    return Row(
        tier=tier,
        id=question.id,
        style=question.style,
        answerable=question.answerable,
        rank=rank,
        correct=(found == len(question.key_facts)) if question.answerable else None,
        facts_found=found,
        facts=len(question.key_facts),
        refused=scoring.refuses(answer),
        looped=scoring.looped(answer),
        citations=len(final.citations),
        citations_relevant=relevant,
        groundedness=grounded,
        finish_reason=final.finish_reason,
        ttft_ms=asked.ttft_ms,
        total_ms=asked.total_ms,
        answered_by=final.tier,
        degraded_reason=final.degraded_reason,
        prompt_tokens=final.usage.prompt_tokens,
        completion_tokens=final.usage.completion_tokens,
        error=asked.error,
        answer=answer,
    )


def ask_all(
    asker: Asker,
    questions: list[Question],
    tiers: list[str],
    max_tokens: int = 0,
    progress: bool = False,
) -> list[Row]:
    """Every question on every tier, tier by tier; searches once per question."""
    retrieved = {q.id: asker.search(q) for q in questions}
    rows: list[Row] = []
    for tier in tiers:
        started = time.perf_counter()
        for n, question in enumerate(questions, 1):
            asked = asker.generate(question, tier, max_tokens)
            rows.append(score(question, tier, retrieved[question.id], asked))
            if progress and (n % 10 == 0 or n == len(questions)):
                print(
                    f"  {tier}: {n}/{len(questions)} asked, {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
    return rows
