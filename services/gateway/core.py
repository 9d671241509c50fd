"""The gateway's domain: validate, retrieve, prompt, generate, cite. Knows nothing of gRPC.

Every outbound call gets the time left in the request's own budget, so a slow plane
costs the request its deadline, never a hang.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ragmesh.retrieval.v1 import retrieval_pb2 as rpb

from services.common.errors import DeadlineExceeded, InvalidArgument, RagmeshError
from services.common.validation import check_range, check_string_map
from services.gateway.config import GatewayConfig
from services.gateway.prompt import Source, citations
from services.gateway.retrieval_client import RetrievalClient
from services.gateway.tiers import Tiers

LOGGER = logging.getLogger(__name__)
SNIPPET_CHARS = 240


@dataclass(frozen=True)
class Call:
    """One request: who asks, until when, and the trace it belongs to."""

    tenant: str
    deadline: float  # time.monotonic() by which the answer must be out
    trace_id: str

    @classmethod
    def start(cls, tenant: str, budget_s: float, traceparent: str = "") -> Call:
        parts = traceparent.split("-")
        valid = len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32
        trace_id = parts[1] if valid else secrets.token_hex(16)
        return cls(tenant=tenant, deadline=time.monotonic() + budget_s, trace_id=trace_id)

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the request's deadline passed")
        return left

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """W3C trace context for the next hop: same trace, a new parent span."""
        return (("traceparent", f"00-{self.trace_id}-{secrets.token_hex(8)}-01"),)


@dataclass(frozen=True)
class GenerateParams:
    query: str
    top_k: int = 0
    max_tokens: int = 0
    temperature: float = 0.0
    filters: dict[str, str] = field(default_factory=dict)
    tier: str = ""
    model_version: str = ""


@dataclass(frozen=True)
class Citation:
    index: int
    document_id: str
    chunk_id: str
    score: float
    snippet: str


@dataclass(frozen=True)
class Dependency:
    name: str
    target: str
    healthy: bool
    detail: str


@dataclass(frozen=True)
class Answer:
    text: str
    citations: list[Citation]
    prompt_tokens: int
    completion_tokens: int
    model: str
    tier: str
    corpus_version: str
    finish_reason: str


class GatewayCore:
    def __init__(self, config: GatewayConfig, retrieval: RetrievalClient, tiers: Tiers):
        self.config = config
        self._retrieval = retrieval
        self._tiers = tiers

    def _check_query(self, query: str) -> str:
        if not query.strip():
            raise InvalidArgument("query: must not be empty", field="query")
        if len(query) > self.config.max_query_chars:
            raise InvalidArgument(
                f"query: {len(query)} characters, over the limit of {self.config.max_query_chars}",
                field="query",
            )
        return query

    def _top_k(self, top_k: int) -> int:
        return check_range(top_k or self.config.default_top_k, 1, self.config.max_top_k, "top_k")

    async def search(
        self, call: Call, query: str, top_k: int, filters: dict[str, str]
    ) -> rpb.SearchResponse:
        request = rpb.SearchRequest(
            tenant=call.tenant,
            query=self._check_query(query),
            top_k=self._top_k(top_k),
            filters=check_string_map(filters, "filters"),
        )
        timeout = min(call.remaining(), self.config.retrieval_timeout_s)
        return await self._retrieval.search(request, timeout, call.metadata())

    async def generate(self, call: Call, params: GenerateParams) -> AsyncIterator[str | Answer]:
        """Yields answer text as the model produces it, then one Answer."""
        max_tokens = check_range(
            params.max_tokens or self.config.default_max_tokens,
            1,
            self.config.max_max_tokens,
            "max_tokens",
        )
        if not 0.0 <= params.temperature <= 2.0:
            raise InvalidArgument("temperature: must be 0..2", field="temperature")
        tier = self._tiers.get(params.tier)
        version = tier.version(params.model_version)
        found = await self.search(call, params.query, params.top_k, params.filters)
        sources = [Source(c.document_id, c.chunk_id, c.text) for c in found.chunks]
        prompt = tier.prompt(params.query, sources, max_tokens)
        parts: list[str] = []
        prompt_tokens = completion_tokens = -1
        async for delta in tier.llm.stream(
            tier.config.model,
            version,
            prompt,
            max_tokens=max_tokens,
            temperature=params.temperature,
            timeout_s=call.remaining(),
            headers=dict(call.metadata()),
        ):
            if delta.text:
                parts.append(delta.text)
                yield delta.text
            prompt_tokens, completion_tokens = delta.prompt_tokens, delta.completion_tokens
            version = delta.model_version
        text = "".join(parts)
        yield Answer(
            text=text,
            citations=[_citation(n, found.chunks[n - 1]) for n in citations(text, sources)],
            prompt_tokens=max(prompt_tokens, 0),
            completion_tokens=max(completion_tokens, 0),
            model=f"{tier.config.model}/{version}" if version else tier.config.model,
            tier=tier.name,
            corpus_version=found.corpus_version,
            finish_reason="length" if completion_tokens >= max_tokens else "stop",
        )

    async def ingest(self, call: Call, documents: list[rpb.Document]) -> rpb.UpsertResponse:
        limit = self.config.max_documents_per_request
        if not 1 <= len(documents) <= limit:
            raise InvalidArgument(f"documents: must hold 1..{limit} documents", field="documents")
        for i, document in enumerate(documents):
            size = len(document.text.encode())
            if size > self.config.max_document_bytes:
                name = f"documents[{i}].text"
                raise InvalidArgument(
                    f"{name}: {size} bytes, over the limit of {self.config.max_document_bytes}",
                    field=name,
                )
        request = rpb.UpsertRequest(tenant=call.tenant, documents=documents)
        return await self._retrieval.upsert(request, call.remaining(), call.metadata())

    async def delete(self, call: Call, document_id: str) -> rpb.DeleteResponse:
        request = rpb.DeleteRequest(tenant=call.tenant, document_id=document_id)
        return await self._retrieval.delete(request, call.remaining(), call.metadata())

    async def status(self, call: Call) -> tuple[str, list[Dependency]]:
        """The tenant's corpus version and the health of each dependency."""
        target = self.config.retrieval_target
        try:
            version = await self._retrieval.version(
                call.tenant, min(call.remaining(), 2.0), call.metadata()
            )
            retrieval = Dependency("retrieval", target, True, "serving")
        except RagmeshError as exc:
            version, retrieval = "", Dependency("retrieval", target, False, exc.message)
        models = []
        for tier in self._tiers.all():
            ready = await tier.llm.ready(tier.config.model, tier.config.version)
            models.append(
                Dependency(
                    f"tier {tier.name}",
                    f"{tier.llm.target}/{tier.config.model}",
                    ready,
                    "ready" if ready else "not ready",
                )
            )
        return version, [retrieval, *models]


def _citation(n: int, chunk: rpb.Chunk) -> Citation:
    snippet = chunk.text if len(chunk.text) <= SNIPPET_CHARS else chunk.text[:SNIPPET_CHARS] + "…"
    return Citation(
        index=n,
        document_id=chunk.document_id,
        chunk_id=chunk.chunk_id,
        score=chunk.score,
        snippet=snippet,
    )
