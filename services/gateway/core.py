"""The gateway's domain: validate, retrieve, prompt, generate, cite. Knows nothing of gRPC.

Every outbound call gets the time left in the request's own budget, so a slow plane
costs the request its deadline, never a hang. Each endpoint sits behind a circuit breaker;
a dependency that is down degrades the answer (and says so) instead of failing it.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import StatusCode
from ragmesh.retrieval.v1 import retrieval_pb2 as rpb

from services.common import telemetry
from services.common.errors import (
    BreakerOpen,
    DeadlineExceeded,
    InvalidArgument,
    RagmeshError,
    Unavailable,
)
from services.common.validation import check_range, check_string_map
from services.config.gateway import GatewayConfig
from services.contract.prompt import Source
from services.gateway import metrics
from services.gateway.breaker import Breaker
from services.gateway.cache import AnswerCache
from services.gateway.citations import citations
from services.gateway.retrieval_client import RetrievalClient
from services.gateway.tiers import Fitted, Tier, Tiers
from services.triton.llm import Delta

LOGGER = logging.getLogger(__name__)
SNIPPET_CHARS = 240
_TRACER = trace.get_tracer("ragmesh.gateway")


@dataclass(frozen=True)
class Call:
    """One request: who asks, until when, and the trace it belongs to."""

    tenant: str
    deadline: float  # time.monotonic() by which the answer must be out
    trace_id: str

    @classmethod
    def start(cls, tenant: str, budget_s: float) -> Call:
        """In the request's span: its trace id names the request (a random one without)."""
        trace_id = telemetry.trace_id() or secrets.token_hex(16)
        return cls(tenant=tenant, deadline=time.monotonic() + budget_s, trace_id=trace_id)

    def remaining(self) -> float:
        """Seconds left; raises DeadlineExceeded when none are."""
        left = self.remaining_s()
        if left <= 0:
            raise DeadlineExceeded("the request's deadline passed")
        return left

    def remaining_s(self) -> float:
        """Seconds left, negative once the deadline passed."""
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class GenerateParams:
    query: str
    top_k: int = 0
    max_tokens: int = 0
    temperature: float = 0.0
    filters: dict[str, str] = field(default_factory=dict)
    tier: str = ""
    model_version: str = ""
    bypass_cache: bool = False
    skip_retrieval: bool = False


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
    breaker: str = ""


@dataclass(frozen=True)
class Status:
    corpus_version: str
    corpus_region: str
    corpus_lag: int  # -1: unknown
    dependencies: list[Dependency]


HIT, MISS, BYPASS = "hit", "miss", "bypass"


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
    cache_status: str = BYPASS
    degraded_reason: str = ""  # empty: not degraded

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reason)


@dataclass(frozen=True)
class _Retrieved:
    chunks: list[rpb.Chunk]
    corpus_version: str
    degraded_reason: str = ""


# An attempt on a model needs at least this much time left to be worth starting.
MIN_ATTEMPT_S = 0.05


class GatewayCore:
    def __init__(self, config: GatewayConfig, retrieval: RetrievalClient, tiers: Tiers):
        self.config = config
        self._retrieval = retrieval
        self._tiers = tiers
        self._retrieval_breaker = Breaker(
            f"retrieval {config.retrieval_target}", config.breaker_failures, config.breaker_open_s
        )
        self._cache: AnswerCache[Answer] = AnswerCache(
            config.answer_cache_entries, config.answer_cache_ttl_s
        )

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
        self,
        call: Call,
        query: str,
        top_k: int,
        filters: dict[str, str],
        *,
        degradable: bool = False,
    ) -> rpb.SearchResponse:
        """Retrieval behind its breaker: an open breaker fails fast with UNAVAILABLE.

        A plain search may take the request's whole deadline; a `degradable` one (a
        generation's sources, which it can answer without) at most retrieval_timeout_s.
        """
        request = rpb.SearchRequest(
            tenant=call.tenant,
            query=self._check_query(query),
            top_k=self._top_k(top_k),
            filters=check_string_map(filters, "filters"),
        )
        breaker = self._retrieval_breaker
        if not breaker.allow():
            raise BreakerOpen("retrieval unavailable: its circuit breaker is open")
        remaining = call.remaining()
        timeout = min(remaining, self.config.retrieval_timeout_s) if degradable else remaining
        try:
            found = await self._retrieval.search(request, timeout, degradable=degradable)
        except Unavailable:
            breaker.record(False)
            raise
        except DeadlineExceeded:
            # Late against its own budget counts; a client's short deadline does not.
            if timeout < remaining:
                breaker.record(False)
            else:
                breaker.release()
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.record(True)
        self._cache.saw_version(call.tenant, found.corpus_version)
        return found

    async def _retrieve(self, call: Call, params: GenerateParams) -> _Retrieved:
        """Sources for the question; with retrieval down or late, none (or UNAVAILABLE)."""
        try:
            found = await self.search(
                call, params.query, params.top_k, params.filters, degradable=True
            )
            return _Retrieved(list(found.chunks), found.corpus_version)
        except (Unavailable, DeadlineExceeded) as exc:
            call.remaining()  # the request's own deadline passed: that is no degradation
            cause = (
                "retrieval late"
                if isinstance(exc, DeadlineExceeded)
                else "retrieval breaker open"
                if isinstance(exc, BreakerOpen)
                else "retrieval unavailable"
            )
            if self.config.retrieval_fallback == "refuse":
                raise Unavailable(
                    f"{cause}; this gateway refuses to answer without sources"
                ) from exc
            version = self._cache.last_version(call.tenant) or ""
            return _Retrieved([], version, cause)

    def _cache_key(
        self, call: Call, params: GenerateParams, tier: str, version: str
    ) -> tuple[object, ...]:
        filters = tuple(sorted(params.filters.items()))
        return (
            call.tenant,
            version,
            tier,
            params.model_version,
            params.query,
            self._top_k(params.top_k),
            params.max_tokens,
            filters,
        )

    async def generate(
        self, call: Call, params: GenerateParams, *, stream: bool = True
    ) -> AsyncGenerator[str | Answer]:
        """Yields answer text as the model produces it, then one Answer. Not `stream`: the
        model answers in one piece (a unary call reads no text before the end; one response
        costs Triton, the gateway and the wire far less than one a token).

        Degrades rather than fails: retrieval down or late -> a fresh cached answer, else an
        answer without sources (or UNAVAILABLE where so configured); a tier down -> its
        fallback tier. Every degraded Answer says why.
        """
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
        self._check_query(params.query)
        # A question that cannot fit even without sources is refused before any retrieval.
        tier.prompt(params.query, [], max_tokens, grounded=not params.skip_retrieval)
        request_span = trace.get_current_span()
        arrived = time.monotonic()
        cacheable = params.temperature == 0.0 and not params.bypass_cache
        found = _Retrieved([], "") if params.skip_retrieval else await self._retrieve(call, params)
        key = self._cache_key(call, params, tier.name, found.corpus_version)
        cached = self._cache.get(key) if cacheable and found.corpus_version else None
        metrics.CACHE.labels("answer", HIT if cached else MISS if cacheable else BYPASS).inc()
        if cached is not None:
            reason = f"{found.degraded_reason}: answer from cache" if found.degraded_reason else ""
            if reason:
                metrics.DEGRADED.labels("retrieval").inc()
            hit = dataclasses.replace(cached, cache_status=HIT, degraded_reason=reason)
            _annotate(request_span, call, params, found, hit, self.config.region)
            _observe(found, hit, arrived)
            yield hit.text
            yield hit
            return
        reasons = (
            [f"{found.degraded_reason}: answered without sources"] if found.degraded_reason else []
        )
        sources = [Source(c.document_id, c.chunk_id, c.text) for c in found.chunks]
        # A pinned version asks for that model: no other tier stands in for it.
        chain = [tier] if params.model_version else self._tiers.chain(tier)
        parts: list[str] = []
        prompt_tokens = completion_tokens = -1
        finish_reason = ""
        served, shown = tier, 0
        async for answered, fitted, delta in self._stream(
            call, chain, version, params, sources, max_tokens, stream
        ):
            served, shown = answered, fitted.sources
            if delta.text:
                if not parts:
                    ttft = time.monotonic() - arrived
                    metrics.TIME_TO_FIRST_TOKEN.labels(answered.name).observe(ttft)
                parts.append(delta.text)
                yield delta.text
            prompt_tokens, completion_tokens = delta.prompt_tokens, delta.completion_tokens
            finish_reason = delta.finish_reason or finish_reason
            version = delta.model_version
        if served is not tier:
            reasons.append(f"tier {tier.name} unavailable: answered by {served.name}")
            metrics.DEGRADED.labels("tier").inc()
        if found.degraded_reason:
            metrics.DEGRADED.labels("retrieval").inc()
        text = "".join(parts)
        cited = citations(text, sources[:shown])  # only sources the prompt held
        answer = Answer(
            text=text,
            citations=[_citation(n, found.chunks[n - 1]) for n in cited],
            prompt_tokens=max(prompt_tokens, 0),
            completion_tokens=max(completion_tokens, 0),
            model=f"{served.config.model}/{version}" if version else served.config.model,
            tier=served.name,
            corpus_version=found.corpus_version,
            finish_reason=finish_reason,
            cache_status=MISS if cacheable else BYPASS,
            degraded_reason="; ".join(reasons),
        )
        if cacheable and not answer.degraded:
            self._cache.put(key, answer)
        _annotate(request_span, call, params, found, answer, self.config.region)
        _observe(found, answer, None)
        yield answer

    async def _stream(
        self,
        call: Call,
        chain: list[Tier],
        pinned: str,
        params: GenerateParams,
        sources: list[Source],
        max_tokens: int,
        stream: bool,
    ) -> AsyncIterator[tuple[Tier, Fitted, Delta]]:
        """Deltas from the first tier and endpoint that answers, in order of preference, each
        with its tier and the prompt fitted to it.

        An endpoint that fails before its first delta costs the client nothing: the next one
        is tried while the deadline allows. One that fails after it has streamed ends the
        response with UNAVAILABLE (DEADLINE_EXCEEDED when the request's deadline cut it),
        never with a clean end. The request's own mistakes (a prompt that cannot fit, a
        pinned version not served) raise at once: no other tier or endpoint is tried.
        """
        errors: list[str] = []
        for tier in chain:
            fitted = tier.prompt(
                params.query, sources, max_tokens, grounded=not params.skip_retrieval
            )
            version = pinned if tier is chain[0] else tier.config.version
            for endpoint in tier.endpoints:
                # A pinned version (a canary, say) bypasses the breakers: its failures say
                # nothing about the version the tier's other traffic gets.
                breaker = None if params.model_version else endpoint.breaker
                if breaker is not None and not breaker.allow():
                    errors.append(f"{endpoint.breaker.name}: breaker open")
                    continue
                if call.remaining() < MIN_ATTEMPT_S:
                    if breaker is not None:
                        breaker.release()
                    raise DeadlineExceeded("the request's deadline passed")
                started = False
                span = _chat_span(tier, endpoint.llm.target, params, fitted.max_tokens)
                last: Delta | None = None
                try:
                    async for delta in endpoint.llm.stream(
                        tier.config.model,
                        version,
                        fitted.prompt,
                        max_tokens=fitted.max_tokens,
                        temperature=params.temperature,
                        stream=stream,
                        timeout_s=call.remaining(),
                        headers=telemetry.triton_traceparent(span),
                    ):
                        last = delta
                        if not started:
                            started = True
                            if breaker is not None:
                                breaker.record(True)
                        yield tier, fitted, delta
                except (Unavailable, DeadlineExceeded) as exc:
                    span.set_status(StatusCode.ERROR, exc.message)
                    # The request's own deadline is not the endpoint's failure.
                    late = call.remaining_s() < MIN_ATTEMPT_S
                    late = late and isinstance(exc, DeadlineExceeded)
                    if breaker is not None:
                        breaker.release() if late else breaker.record(False)
                    if started:
                        kind = DeadlineExceeded if late else Unavailable
                        raise kind(f"generation failed after it started: {exc.message}") from exc
                    call.remaining()
                    errors.append(f"{endpoint.breaker.name}: {exc.message}")
                    continue
                except BaseException:
                    if breaker is not None and not started:
                        breaker.release()
                    raise
                finally:
                    _end_chat(span, last)
                if breaker is not None and not started:
                    breaker.record(True)
                return
        raise Unavailable("no model could answer: " + "; ".join(errors))

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
        return await self._retrieval.upsert(request, call.remaining())

    async def delete(self, call: Call, document_id: str) -> rpb.DeleteResponse:
        request = rpb.DeleteRequest(tenant=call.tenant, document_id=document_id)
        return await self._retrieval.delete(request, call.remaining())

    async def status(self, call: Call) -> Status:
        """The tenant's corpus version (and its replica's lag), and each dependency's health."""
        target = self.config.retrieval_target
        breaker = self._retrieval_breaker
        try:
            corpus = await self._retrieval.version(call.tenant, min(call.remaining(), 2.0))
            retrieval = Dependency("retrieval", target, True, "serving", breaker.state)
        except RagmeshError as exc:
            corpus = rpb.GetCorpusVersionResponse()
            retrieval = Dependency("retrieval", target, False, exc.message, breaker.state)
        models = []
        for tier in self._tiers.all():
            for endpoint in tier.endpoints:
                ready = await endpoint.llm.ready(tier.config.model, tier.config.version)
                models.append(
                    Dependency(
                        f"tier {tier.name}",
                        f"{endpoint.llm.target}/{tier.config.model}",
                        ready,
                        "ready" if ready else "not ready",
                        endpoint.breaker.state,
                    )
                )
        return Status(
            corpus_version=corpus.corpus_version,
            corpus_region=corpus.region,
            corpus_lag=corpus.lag if corpus.lag_known else -1,
            dependencies=[retrieval, *models],
        )


def _observe(found: _Retrieved, answer: Answer, arrived: float | None) -> None:
    """Metrics of one answer; `arrived` for a cached one, whose text is out at once."""
    if arrived is not None:
        metrics.TIME_TO_FIRST_TOKEN.labels(answer.tier).observe(time.monotonic() - arrived)
    if answer.cache_status != HIT:  # a cached answer costs no tokens
        metrics.TOKENS.labels(answer.tier, "input").inc(answer.prompt_tokens)
        metrics.TOKENS.labels(answer.tier, "output").inc(answer.completion_tokens)
    if found.chunks:
        metrics.RETRIEVAL_TOP_SCORE.observe(max(c.score for c in found.chunks))


def _chat_span(tier: Tier, target: str, params: GenerateParams, max_tokens: int) -> trace.Span:
    """A generation attempt, with the OpenTelemetry GenAI attributes. Not made current: it
    lives across the stream's yields; Triton joins it through the traceparent header.
    An invalid span in an unsampled trace: nothing to record."""
    if not trace.get_current_span().is_recording():
        return trace.INVALID_SPAN
    return _TRACER.start_span(
        f"chat {tier.config.model}",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "triton",
            "gen_ai.request.model": tier.config.model,
            "gen_ai.request.max_tokens": max_tokens,
            "gen_ai.request.temperature": params.temperature,
            "server.address": target,
            "ragmesh.tier": tier.name,
        },
    )


def _end_chat(span: trace.Span, last: Delta | None) -> None:
    if last is not None:
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": max(last.prompt_tokens, 0),
                "gen_ai.usage.output_tokens": max(last.completion_tokens, 0),
                "gen_ai.response.finish_reasons": [last.finish_reason]
                if last.finish_reason
                else [],
            }
        )
    span.end()


def _annotate(
    span: trace.Span,
    call: Call,
    params: GenerateParams,
    found: _Retrieved,
    answer: Answer,
    region: str,
) -> None:
    """The request's span gets what it was and how it went; hashes, never text."""
    if not span.is_recording():  # an unsampled trace: spare the hashing
        return
    span.set_attributes(
        {
            "ragmesh.tenant": telemetry.digest(call.tenant),
            "ragmesh.region": region,
            "ragmesh.tier": answer.tier,
            "ragmesh.routing_reason": (
                "fallback"
                if "answered by" in answer.degraded_reason
                else "requested"
                if params.tier
                else "default"
            ),
            "ragmesh.cache_status": answer.cache_status,
            "ragmesh.degraded": answer.degraded,
            "ragmesh.degraded_reason": answer.degraded_reason,
            "ragmesh.retrieval.k": len(found.chunks),
            "ragmesh.retrieval.top_score": max((c.score for c in found.chunks), default=0.0),
            "ragmesh.corpus_version": found.corpus_version,
            "ragmesh.prompt_hash": telemetry.digest(params.query),
            "gen_ai.request.model": answer.model,
            "gen_ai.usage.input_tokens": answer.prompt_tokens,
            "gen_ai.usage.output_tokens": answer.completion_tokens,
            "gen_ai.response.finish_reasons": [answer.finish_reason]
            if answer.finish_reason
            else [],
        }
    )


def _citation(n: int, chunk: rpb.Chunk) -> Citation:
    snippet = chunk.text if len(chunk.text) <= SNIPPET_CHARS else chunk.text[:SNIPPET_CHARS] + "…"
    return Citation(
        index=n,
        document_id=chunk.document_id,
        chunk_id=chunk.chunk_id,
        score=chunk.score,
        snippet=snippet,
    )
