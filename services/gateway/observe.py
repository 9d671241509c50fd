"""What an answer tells the metrics and the request's span (hashes, never text)."""

from __future__ import annotations

import json
import time

from opentelemetry import trace

from services.common import telemetry
from services.common.redaction import redact
from services.control.policy import Guardrails
from services.gateway import metrics
from services.gateway.retrieval_client import Found
from services.gateway.values import Answer, Call, GenerateParams


def answered(found: Found, answer: Answer, arrived: float | None) -> None:
    """Metrics of one answer; `arrived` for a cached one, whose text is out at once."""
    if arrived is not None:
        metrics.TIME_TO_FIRST_TOKEN.labels(answer.tier).observe(time.monotonic() - arrived)
    if found.chunks:
        metrics.RETRIEVAL_TOP_SCORE.observe(max(c.score for c in found.chunks))


def annotate(
    span: trace.Span,
    call: Call,
    params: GenerateParams,
    found: Found,
    answer: Answer,
    region: str,
    rails: Guardrails,
) -> None:
    """The request's span gets what it was and how it went; hashes, never text, unless the
    tenant's policy opts in to prompts in telemetry (then the question, redacted, as
    OpenTelemetry GenAI's opt-in `gen_ai.input.messages`). Each guardrail decision other
    than a pass is an event `ragmesh.guardrail`."""
    if not span.is_recording():  # an unsampled trace: spare the hashing
        return
    for d in answer.guardrails:
        if d.verdict != "pass":
            span.add_event(
                "ragmesh.guardrail",
                {"check": d.check, "verdict": d.verdict, "action": d.action, "detail": d.detail},
            )
    if rails.telemetry_prompts:
        message = {"role": "user", "parts": [{"type": "text", "content": redact(params.query)}]}
        span.set_attribute("gen_ai.input.messages", json.dumps([message]))
    routing = answer.routing.reason if answer.routing else ""
    span.set_attributes(
        {
            "ragmesh.tenant": telemetry.digest(call.tenant),
            "ragmesh.region": region,
            "ragmesh.tier": answer.tier,
            "ragmesh.routing_reason": routing,
            "ragmesh.fallback_from": answer.fallback_from,
            "ragmesh.cost_usd": answer.cost_usd,
            "ragmesh.cache_status": answer.cache_status,
            "ragmesh.cache.kind": answer.cache_match.kind if answer.cache_match else "",
            "ragmesh.cache.similarity": answer.cache_match.similarity
            if answer.cache_match
            else 0.0,
            "ragmesh.cache.matched_trace_id": (
                answer.cache_match.trace_id if answer.cache_match else ""
            ),
            "ragmesh.degraded": answer.degraded,
            "ragmesh.degraded_reason": answer.degraded_reason,
            "ragmesh.retrieval.k": len(found.chunks),
            "ragmesh.retrieval.top_score": max((c.score for c in found.chunks), default=0.0),
            "ragmesh.corpus_version": found.corpus_version,
            "ragmesh.prompt_hash": telemetry.digest(params.query),
            "ragmesh.guardrails": [f"{d.check}:{d.verdict}:{d.action}" for d in answer.guardrails],
            "gen_ai.request.model": answer.model,
            "gen_ai.usage.input_tokens": answer.prompt_tokens,
            "gen_ai.usage.output_tokens": answer.completion_tokens,
            "gen_ai.response.finish_reasons": [answer.finish_reason]
            if answer.finish_reason
            else [],
        }
    )
