"""The gateway's domain: validate, retrieve, prompt, generate, cite. Knows nothing of gRPC.

A generation is one pipeline of steps, the same for a unary call and a stream: plan (validate,
pick the tier, check the question fits), sources (retrieval, or none), the answer cache, the
model (services/gateway/generation.py), the answer (citations, usage, why it degraded).
Every outbound call gets the time left in the request's own budget, so a slow plane costs
the request its deadline, never a hang. Each endpoint sits behind a circuit breaker; a
dependency that is down degrades the answer (and says so) instead of failing it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import numpy as np
from opentelemetry import trace

from services.common import tokens
from services.common.errors import (
    BreakerOpen,
    DeadlineExceeded,
    InvalidArgument,
    RagmeshError,
    Unavailable,
)
from services.common.validation import check_string_map
from services.config.gateway import GatewayConfig
from services.contract.documents import MAX_EMBED_INPUTS, Document
from services.contract.prompt import Source
from services.control.admission import Charge, Reservation
from services.control.policy import Guardrails
from services.gateway import checks, generation, metrics, observe
from services.gateway.breaker import Breaker
from services.gateway.cache import AnswerCache
from services.gateway.control import Control, Spent
from services.gateway.conversation import retrieval_query
from services.gateway.plan import Plan, Planner
from services.gateway.retrieval_client import (
    Chunk,
    CorpusState,
    Deleted,
    Embedded,
    Found,
    RetrievalClient,
    Written,
)
from services.gateway.semantic_cache import SemanticCache
from services.gateway.tiers import Tiers
from services.gateway.values import (
    BYPASS,
    HIT,
    MISS,
    Answer,
    CacheMatch,
    Call,
    Citation,
    Continuation,
    Dependency,
    GenerateParams,
    Guardrail,
    Status,
)
from services.guardrails.citations import CitationFilter, citations

LOGGER = logging.getLogger(__name__)
SNIPPET_CHARS = 240
EMBEDDINGS = "embeddings"  # the usage records' and metrics' tier of embedding requests


@dataclass
class _Progress:
    """How far a generation got, to settle a stream that ends early."""

    tier: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class _Sources:
    found: Found
    degraded_reason: str = ""  # why there are none: retrieval down or late


class GatewayCore:
    """`control` None: every request is admitted and nothing is recorded (unit tests)."""

    def __init__(
        self,
        config: GatewayConfig,
        retrieval: RetrievalClient,
        tiers: Tiers,
        control: Control | None = None,
    ):
        self.config = config
        self._retrieval = retrieval
        self._tiers = tiers
        self._control = control
        self.planner = self._planner = Planner(config, tiers, control)
        self._retrieval_breaker = Breaker(
            f"retrieval {config.retrieval_target}", config.breaker_failures, config.breaker_open_s
        )
        # Answers with the trace id of the request that got them from the model.
        self._cache: AnswerCache[tuple[Answer, str]] = AnswerCache(
            config.answer_cache_entries, config.answer_cache_ttl_s
        )
        self._semantic: SemanticCache[Answer] = SemanticCache(
            config.semantic_cache_entries,
            config.answer_cache_ttl_s,
            config.semantic_cache_threshold,
        )

    async def search(self, call: Call, query: str, top_k: int, filters: dict[str, str]) -> Found:
        """A plain search: one request against the key's limits, then retrieval."""
        await self._admit_call(call)
        return await self._search(call, query, top_k, filters)

    async def embed(self, call: Call, texts: list[str]) -> Embedded:
        """The embedder's vectors for `texts`, the ones retrieval searches with; the tokens
        it read are the request's usage (tier "embeddings"). InvalidArgument naming `input`
        or `input[i]` before any charge for what the gateway can tell is wrong (1 to
        MAX_EMBED_INPUTS non-empty texts of at most max_query_chars); retrieval refuses a
        text over the embedder's window (the charge is then released)."""
        if not 1 <= len(texts) <= MAX_EMBED_INPUTS:
            raise InvalidArgument(
                f"input: must hold 1..{MAX_EMBED_INPUTS} texts, got {len(texts)}", field="input"
            )
        for i, text in enumerate(texts):
            if not text.strip() or len(text) > self.config.max_query_chars:
                raise InvalidArgument(
                    f"input[{i}]: must hold 1..{self.config.max_query_chars} characters",
                    field=f"input[{i}]",
                )
        worst = Charge(1, sum(tokens.bound(t) for t in texts), 0)
        reservation = await self._admit(call, worst)
        embedded: Embedded | None = None
        try:
            with self._retrieval_breaker.attempt() as attempt:
                try:
                    embedded = await self._retrieval.embed(texts, call.remaining())
                except Unavailable:
                    attempt.failed()
                    raise
                attempt.succeeded()
            return embedded
        finally:
            if reservation is not None and self._control is not None:
                used = sum(embedded.tokens) if embedded else 0
                model = embedded.model if embedded else ""
                outcome = "ok" if embedded else "failed"
                spent = Spent(EMBEDDINGS, model, used, 0, MISS, outcome)
                self._control.settle(call, reservation, spent, "")

    async def _admit_call(self, call: Call) -> None:
        """A request that spends no tokens: it counts against request limits alone."""
        if self._control is not None:
            await self._control.admit_call(call)

    async def _search(
        self,
        call: Call,
        query: str,
        top_k: int,
        filters: dict[str, str],
        *,
        degradable: bool = False,
    ) -> Found:
        """Retrieval behind its breaker: an open breaker fails fast with UNAVAILABLE.

        A plain search may take the request's whole deadline; a `degradable` one (a
        generation's sources, which it can answer without) at most retrieval_timeout_s.
        """
        query, top_k = self._planner.check_query(query), self._planner.top_k(top_k)
        filters = check_string_map(filters, "filters")
        with self._retrieval_breaker.attempt() as attempt:
            remaining = call.remaining()
            timeout = min(remaining, self.config.retrieval_timeout_s) if degradable else remaining
            try:
                found = await self._retrieval.search(
                    call.tenant, query, top_k, filters, timeout, degradable=degradable
                )
            except Unavailable:
                attempt.failed()
                raise
            except DeadlineExceeded:
                if timeout < remaining:  # late against its own budget; a client's is not
                    attempt.failed()
                raise
            attempt.succeeded()
        self._cache.saw_version(call.tenant, found.corpus_version)
        return found

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
        rails = self._rails(call)
        params = checks.with_schema(params)
        plan = self._planner.plan(call, params, stream=stream)
        decisions = checks.check_injection(params, rails)
        reservation = await self._admit(call, plan.worst)
        progress = _Progress(plan.tier.name, plan.tier.config.model)
        answer: Answer | None = None
        outcome = "failed"
        try:
            async for event in self._generate(call, params, plan, stream, progress, decisions):
                if isinstance(event, Answer):
                    answer = event
                    outcome = "ok"
                yield event
        except (GeneratorExit, asyncio.CancelledError):
            if answer is None:  # the client went away: it pays for what was generated
                outcome = "cancelled"
            raise
        finally:
            if reservation is not None and self._control is not None:
                spent = (
                    Spent(
                        answer.tier,
                        answer.model,
                        answer.prompt_tokens,
                        answer.completion_tokens,
                        answer.cache_status,
                        outcome,
                    )
                    if answer is not None
                    else Spent(
                        progress.tier,
                        progress.model,
                        progress.input_tokens,
                        progress.output_tokens,
                        MISS,
                        outcome,
                    )
                )
                reason = plan.route.reason if plan.route else ""
                self._control.settle(call, reservation, spent, reason)

    async def _admit(self, call: Call, worst: Charge) -> Reservation | None:
        if self._control is None:
            return None
        return await self._control.admit(call, worst)

    def _rails(self, call: Call) -> Guardrails:
        """The tenant's guardrails; the built-in defaults without a control plane."""
        if self._control is None:
            return Guardrails()
        return self._control.policy.policy.guardrails(call.tenant)

    async def _generate(
        self,
        call: Call,
        params: GenerateParams,
        plan: Plan,
        stream: bool,
        progress: _Progress,
        decisions: list[Guardrail],
    ) -> AsyncGenerator[str | Answer]:
        """The answer from a cache or the model, after the source and answer guardrails.
        An answer a guardrail may still withhold or replace (a JSON schema; an ungrounded
        answer the policy replaces) is asked for in one piece and sent once checked."""
        request_span = trace.get_current_span()
        arrived = time.monotonic()
        rails = self._rails(call)
        early = self._early(call, params, plan, decisions)
        if early is not None:
            hit, found = early
            observe.annotate(request_span, call, params, found, hit, self.config.region, rails)
            observe.answered(found, hit, arrived)
            yield hit.text
            yield hit
            return
        sources = (
            _Sources(Found([], "")) if params.skip_retrieval else await self._sources(call, params)
        )
        kept, shown, screened = checks.screen_sources(sources.found.chunks, rails)
        decisions = [*decisions, *screened]
        flagged = any(d.check == "prompt_injection" and d.action == "flag" for d in decisions)
        cacheable = plan.cacheable and not flagged  # no answers to injections kept
        scope = self._scope(call, params, plan.tier.name, sources.found.corpus_version)
        key = (*scope, params.query, params.history)
        semantic = self._semantic_allowed(call, params, plan, sources) if cacheable else None
        cached = self._cached(key, plan, sources, cacheable) or self._similar(
            scope, params.query, sources, plan, semantic
        )
        if cached is not None:
            cached = _with_inputs(cached, decisions)
            checks.record(decisions)
            observe.annotate(
                request_span, call, params, sources.found, cached, self.config.region, rails
            )
            observe.answered(sources.found, cached, arrived)
            yield cached.text
            yield cached
            return
        asked, shown, redacted = checks.redact_inputs(params, shown, rails)
        decisions += redacted
        hold = params.json_schema is not None or (
            rails.ungrounded == "replace" and rails.groundedness_floor > 0 and bool(shown)
        )
        answer: Answer | None = None
        async for event in self._from_model(
            call, asked, plan, sources, (kept, shown), stream and not hold, arrived, progress
        ):
            if isinstance(event, Answer):
                answer = event
            elif not hold:
                yield event
        assert answer is not None
        answer = await self._checked(call, asked, plan, answer, (kept, shown), rails, decisions)
        if flagged:  # the cache was bypassed, not missed
            answer = dataclasses.replace(answer, cache_status=BYPASS)
        checks.record(answer.guardrails)
        if hold:
            yield answer.text
        if cacheable and not answer.degraded:
            self._cache.put(key, (answer, call.trace_id))
            # A semantic match serves whole answers only: one cut by max_tokens may not be
            # whole for the other question.
            if semantic is not None and answer.finish_reason == "stop":
                self._semantic.put(scope, params.query, semantic, answer, call.trace_id)
        observe.annotate(
            request_span, call, params, sources.found, answer, self.config.region, rails
        )
        observe.answered(sources.found, answer, None)
        yield answer

    def _early(
        self, call: Call, params: GenerateParams, plan: Plan, decisions: list[Guardrail]
    ) -> tuple[Answer, Found] | None:
        """An exact hit served before retrieval is asked: on the tenant's corpus version this
        gateway saw within `corpus_version_fresh_s` (a stale version at most that old);
        None when there is none, or when the request may not use the cache."""
        fresh_s = self.config.corpus_version_fresh_s
        version = self._cache.last_version(call.tenant, fresh_s) if fresh_s else None
        flagged = any(d.action == "flag" for d in decisions)
        if not version or params.skip_retrieval or not plan.cacheable or flagged:
            return None
        scope = self._scope(call, params, plan.tier.name, version)
        found = self._cache.get((*scope, params.query, params.history))
        if found is None:
            return None  # counted where retrieval's answer decides: _cached
        metrics.CACHE.labels("answer", HIT).inc()
        cached, trace_id = found
        checks.record(decisions)
        sources = _Sources(Found([], version))
        answer = _from_cache(cached, CacheMatch("exact", 1.0, trace_id), plan, sources)
        return _with_inputs(answer, decisions), sources.found

    async def _checked(
        self,
        call: Call,
        params: GenerateParams,
        plan: Plan,
        answer: Answer,
        prompt: tuple[list[Chunk], list[Source]],
        rails: Guardrails,
        decisions: list[Guardrail],
    ) -> Answer:
        """The answer after the output guardrails, with every decision in order: the
        request's, the citations', groundedness (an ungrounded answer replaced by
        `rails.replace_tier`'s where the policy says so), the JSON schema (Aborted when the
        answer fails it)."""
        grounded = checks.grounding(answer.text, prompt[1], rails)
        if grounded is not None and grounded.action == "replace":
            answer, grounded = await self._replaced(call, params, plan, answer, prompt, grounded)
        after = [grounded] if grounded is not None else []
        if params.json_schema is not None:
            text, decision = checks.check_json(answer.text, params.json_schema)
            answer = dataclasses.replace(answer, text=text)
            after.append(decision)
        return dataclasses.replace(answer, guardrails=(*decisions, *answer.guardrails, *after))

    async def _replaced(
        self,
        call: Call,
        params: GenerateParams,
        plan: Plan,
        answer: Answer,
        prompt: tuple[list[Chunk], list[Source]],
        grounded: Guardrail,
    ) -> tuple[Answer, Guardrail]:
        """The replace tier's answer from the same sources in place of an ungrounded one;
        the answer stands, flagged, where that tier answered it already or cannot answer.
        Usage and cost stay the first answer's (that tier's tokens were spent)."""
        name = self._rails(call).replace_tier or ""
        if name == answer.tier or not self._tiers.has(name):
            why = "it answered" if name == answer.tier else "this gateway does not serve it"
            detail = f"{grounded.detail}; not replaced by tier {name}: {why}"
            return answer, dataclasses.replace(grounded, action="flag", detail=detail)
        tier, (kept, shown) = self._tiers.get(name), prompt
        parts: list[str] = []
        try:
            async for step in generation.generate(
                call, [tier], tier.config.version, params, shown, plan.max_tokens, False
            ):
                parts.append(step.delta.text)
                shown = shown[: step.fitted.sources]
        except Unavailable as exc:
            detail = f"{grounded.detail}; tier {name} could not replace it: {exc.message}"
            return answer, dataclasses.replace(grounded, action="flag", detail=detail)
        text = "".join(parts)
        found = [_citation(n, kept[n - 1]) for n in citations(text, shown)]
        replaced = dataclasses.replace(answer, text=text, citations=found)
        detail = f"{grounded.detail}; replaced by tier {name}'s answer"
        return replaced, dataclasses.replace(grounded, detail=detail)

    async def _sources(self, call: Call, params: GenerateParams) -> _Sources:
        """Sources for the question (made self-contained with the conversation where it refers
        back); with retrieval down or late, none (or UNAVAILABLE)."""
        query = retrieval_query(params.query, params.history, self.config.max_query_chars)
        try:
            found = await self._search(call, query, params.top_k, params.filters, degradable=True)
            return _Sources(found)
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
            return _Sources(Found([], version), cause)

    def _scope(
        self, call: Call, params: GenerateParams, tier: str, version: str
    ) -> tuple[object, ...]:
        """What a cached answer must share with a request besides its question: tenant,
        corpus version, tier, every generation parameter and the tenant's guardrails that
        shape an answer."""
        filters = tuple(sorted(params.filters.items()))
        return (
            self._rails(call).shaping,
            call.tenant,
            version,
            tier,
            params.model_version,
            self._planner.top_k(params.top_k),
            params.max_tokens,
            params.top_p,
            params.stop,
            filters,
        )

    def _semantic_allowed(
        self, call: Call, params: GenerateParams, plan: Plan, sources: _Sources
    ) -> np.ndarray | None:
        """The question's vector where the request may use the semantic cache: cacheable,
        not part of a conversation (the history would change the answer), retrieval's
        vector at hand, and a criticality the tenant's policy lets use it; else None."""
        vector = sources.found.query_vector
        if (
            vector is None
            or not plan.cacheable
            or params.history
            or self._control is None
            or not self._control.policy.policy.semantic_cache(call.tenant, params.priority)
        ):
            return None
        return vector

    def _cached(
        self, key: tuple[object, ...], plan: Plan, sources: _Sources, cacheable: bool
    ) -> Answer | None:
        """A fresh cached answer to the same request on the same corpus version, if any;
        none for a request that may not use the cache (not `cacheable`)."""
        version = sources.found.corpus_version
        cached = self._cache.get(key) if cacheable and version else None
        metrics.CACHE.labels("answer", HIT if cached else MISS if cacheable else BYPASS).inc()
        if cached is None:
            return None
        answer, trace_id = cached
        return _from_cache(answer, CacheMatch("exact", 1.0, trace_id), plan, sources)

    def _similar(
        self,
        scope: tuple[object, ...],
        question: str,
        sources: _Sources,
        plan: Plan,
        vector: np.ndarray | None,
    ) -> Answer | None:
        """A fresh cached answer to the question worded differently, in the same scope."""
        if vector is None:
            metrics.CACHE.labels("semantic", BYPASS).inc()
            return None
        match = self._semantic.get(scope, question, vector)
        metrics.CACHE.labels("semantic", HIT if match else MISS).inc()
        if match is None:
            return None
        metrics.SEMANTIC_SIMILARITY.observe(match.similarity)
        found = CacheMatch("semantic", round(match.similarity, 4), match.trace_id)
        return _from_cache(match.value, found, plan, sources)

    async def _from_model(
        self,
        call: Call,
        params: GenerateParams,
        plan: Plan,
        sources: _Sources,
        material: tuple[list[Chunk], list[Source]],
        stream: bool,
        arrived: float,
        progress: _Progress,
    ) -> AsyncGenerator[str | Answer]:
        """The model's text as it comes, less the citation markers that name no source it
        was shown, then the Answer: citations of the sources its prompt held, usage, the
        tier and version that answered, why it degraded, the citation guardrail's decision.
        `material`: the chunks the prompt may show and their Sources."""
        chunks, prompt_sources = material
        parts: list[str] = []
        markers: CitationFilter | None = None
        served, version, shown, last, prompt, budget = plan.tier, plan.version, 0, None, "", 0
        continued: tuple[Continuation, ...] = ()
        chunk_at = arrived  # when the last piece of text went out
        async for step in generation.generate(
            call, plan.chain, plan.version, params, prompt_sources, plan.max_tokens, stream
        ):
            served, shown, last = step.tier, step.fitted.sources, step.delta
            continued = step.continued
            prompt, budget = step.fitted.prompt, step.fitted.max_tokens
            progress.tier, progress.model = served.name, served.config.model
            progress.input_tokens = max(last.prompt_tokens, 0) or progress.input_tokens
            if last.completion_tokens >= 0:
                progress.output_tokens = last.completion_tokens
            elif step.delta.text:
                progress.output_tokens += 1  # a model without counts: one delta, one token
            if markers is None and not params.skip_retrieval:  # a plain chat cites nothing
                markers = CitationFilter(shown)
            text = markers.feed(step.delta.text) if markers else step.delta.text
            if text:
                now = time.monotonic()
                if not parts:
                    ttft = now - arrived
                    metrics.TIME_TO_FIRST_TOKEN.labels(served.name).observe(ttft)
                    if self._control is not None:
                        self._control.first_token(served.name, ttft)
                elif stream:
                    metrics.TIME_PER_OUTPUT_CHUNK.labels(served.name).observe(now - chunk_at)
                chunk_at = now
                parts.append(text)
                yield text
        tail = markers.close() if markers else ""
        if tail:
            parts.append(tail)
            yield tail
        if last is not None:
            version = last.model_version
        fallback_from = plan.tier.name if served is not plan.tier else ""
        text = "".join(parts)
        if last is not None and last.prompt_tokens < 0:  # a model that reports no counts:
            progress.input_tokens = served.count(prompt) + served.config.template_tokens
        if last is not None and last.completion_tokens < 0:  # counted with its tokenizer
            progress.output_tokens = min(served.count(text), budget)  # a bound, never above
        yield Answer(
            text=text,
            citations=[
                _citation(n, chunks[n - 1]) for n in citations(text, prompt_sources[:shown])
            ],
            prompt_tokens=progress.input_tokens,
            completion_tokens=progress.output_tokens,
            model=f"{served.config.model}/{version}" if version else served.config.model,
            tier=served.name,
            corpus_version=sources.found.corpus_version,
            finish_reason=last.finish_reason if last is not None else "",
            cache_status=MISS if plan.cacheable else BYPASS,
            degraded_reason=_degraded(sources, fallback_from, served.name),
            fallback_from=fallback_from,
            routing=plan.route,
            cost_usd=self._cost(served.name, progress),
            guardrails=_marker_check(markers, shown),
            continuations=continued,
        )

    def _cost(self, tier: str, progress: _Progress) -> float:
        if self._control is None:
            return 0.0
        price = self._control.policy.policy.price(tier)
        return price.cost(progress.input_tokens, progress.output_tokens)

    async def ingest(self, call: Call, documents: list[Document]) -> Written:
        """Sends the documents to retrieval, which parses, chunks and stores them whole.

        Raises InvalidArgument for a count outside 1..max_documents_per_request, and with a
        field violation for each document over its size limit (`documents[i].text` over
        max_document_bytes of UTF-8, `documents[i].content` over max_content_bytes),
        checked before admission; retrieval's own refusals, each violation kept.
        """
        limit = self.config.max_documents_per_request
        if not 1 <= len(documents) <= limit:
            raise InvalidArgument(f"documents: must hold 1..{limit} documents", field="documents")
        violations = []
        for i, document in enumerate(documents):
            for name, size, most in (
                ("text", len(document.text.encode()), self.config.max_document_bytes),
                ("content", len(document.content), self.config.max_content_bytes),
            ):
                if size > most:
                    why = f"document {document.id!r}: {size:,} bytes, over the limit of {most:,}"
                    violations.append((f"documents[{i}].{name}", why))
        if violations:
            raise InvalidArgument.of(violations)
        await self._admit_call(call)
        written = await self._retrieval.upsert(call.tenant, documents, call.remaining())
        self._cache.saw_version(call.tenant, written.corpus_version)  # no stale early hits
        return written

    async def delete(self, call: Call, document_id: str) -> Deleted:
        await self._admit_call(call)
        deleted = await self._retrieval.delete(call.tenant, document_id, call.remaining())
        if deleted.corpus_version:
            self._cache.saw_version(call.tenant, deleted.corpus_version)
        return deleted

    async def status(self, call: Call) -> Status:
        """The tenant's corpus version (and its replica's lag), and each dependency's health."""
        target = self.config.retrieval_target
        breaker = self._retrieval_breaker
        try:
            corpus = await self._retrieval.version(call.tenant, min(call.remaining(), 2.0))
            retrieval = Dependency("retrieval", target, True, "serving", breaker.state)
        except RagmeshError as exc:
            corpus = CorpusState("", "", 0)
            retrieval = Dependency("retrieval", target, False, exc.message, breaker.state)
        models = []
        for tier in self._tiers.all():
            # An upstream tier lists its one server once, however many tries it has.
            for endpoint in dict.fromkeys(tier.endpoints):
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
        if self._control is not None:
            healthy, detail = self._control.state()
            models.append(Dependency("control store", self._control.store.url, healthy, detail))
        return Status(
            corpus_version=corpus.corpus_version,
            corpus_region=corpus.region,
            corpus_lag=corpus.lag,
            dependencies=[retrieval, *models],
        )


def _from_cache(answer: Answer, match: CacheMatch, plan: Plan, sources: _Sources) -> Answer:
    """A cached answer as this request's: free, routed as this one, degraded where its
    sources are (retrieval down: the cached answer stands in), and never continued (no
    stream of this request's was)."""
    reason = f"{sources.degraded_reason}: answer from cache" if sources.degraded_reason else ""
    if reason:
        metrics.DEGRADED.labels("retrieval").inc()
    return dataclasses.replace(
        answer,
        cache_status=HIT,
        degraded_reason=reason,
        cost_usd=0.0,
        routing=plan.route,
        cache_match=match,
        continuations=(),
    )


def _marker_check(markers: CitationFilter | None, shown: int) -> tuple[Guardrail, ...]:
    """The citation guardrail's decision: a pass where sources were shown and every marker
    names one; none where none were shown and nothing was removed."""
    if markers is None or not markers.removed:
        return (Guardrail("citations", "pass", "none"),) if shown else ()
    detail = f"{markers.removed} markers naming no source shown removed"
    return (Guardrail("citations", "removed", "remove", detail),)


def _with_inputs(answer: Answer, decisions: list[Guardrail]) -> Answer:
    """A cached answer with this request's input decisions and the answer's own output
    decisions (citations, groundedness, JSON schema), which hold for its text."""
    output = tuple(d for d in answer.guardrails if d.check in checks.OUTPUT_CHECKS)
    return dataclasses.replace(answer, guardrails=(*decisions, *output))


def _degraded(sources: _Sources, fallback_from: str, served: str) -> str:
    """Why an answer from the model is degraded; "" when it is not. Counts it, too."""
    reasons = []
    if sources.degraded_reason:
        reasons.append(f"{sources.degraded_reason}: answered without sources")
        metrics.DEGRADED.labels("retrieval").inc()
    if fallback_from:
        reasons.append(f"tier {fallback_from} unavailable: answered by {served}")
        metrics.DEGRADED.labels("tier").inc()
    return "; ".join(reasons)


def _citation(n: int, chunk: Chunk) -> Citation:
    snippet = chunk.text if len(chunk.text) <= SNIPPET_CHARS else chunk.text[:SNIPPET_CHARS] + "…"
    return Citation(
        index=n,
        document_id=chunk.document_id,
        chunk_id=chunk.chunk_id,
        score=chunk.score,
        snippet=snippet,
        page=chunk.page,
        heading=chunk.heading,
    )
