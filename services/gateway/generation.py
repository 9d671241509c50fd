"""Generation across tiers and endpoints: the first that answers, each behind its breaker.

An endpoint that fails before its first delta costs the client nothing: the next one is
tried while the deadline allows, then the next tier (the answer says which). One that fails
after it has streamed ends the response with UNAVAILABLE (DEADLINE_EXCEEDED when the
request's own deadline cut it), never with a clean end. The request's own mistakes (a prompt
that cannot fit, a pinned version not served) raise at once: no other endpoint is tried.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import StatusCode

from services.common import telemetry
from services.common.errors import BreakerOpen, DeadlineExceeded, Unavailable
from services.contract.prompt import Source
from services.gateway.breaker import Attempt, unguarded
from services.gateway.tiers import Endpoint, Fitted, Tier
from services.gateway.values import Call, GenerateParams
from services.triton.llm import Delta, Sampling

# An attempt on a model needs at least this much time left to be worth starting.
MIN_ATTEMPT_S = 0.05
_TRACER = trace.get_tracer("ragmesh.gateway")


@dataclass(frozen=True)
class Served:
    """A delta, the tier that produced it and the prompt it was asked with."""

    tier: Tier
    fitted: Fitted
    delta: Delta


async def generate(
    call: Call,
    chain: Sequence[Tier],
    version: str,
    params: GenerateParams,
    sources: Sequence[Source],
    max_tokens: int,
    stream: bool,
) -> AsyncIterator[Served]:
    """Deltas of the first tier of `chain` and endpoint that answers (`version` for the
    first tier; a fallback tier's own for the others). Raises Unavailable when none can."""
    errors: list[str] = []
    for tier in chain:
        fitted = tier.prompt(
            params.query,
            sources,
            max_tokens,
            grounded=not params.skip_retrieval,
            history=params.history,
        )
        asked = version if tier is chain[0] else tier.config.version
        for endpoint in tier.endpoints:
            try:
                # A pinned version (a canary, say) bypasses the breakers: its failures say
                # nothing about the version the tier's other traffic gets.
                with _guard(endpoint, params) as attempt:
                    async for delta in _attempt(
                        call, tier, endpoint, asked, fitted, params, stream, attempt
                    ):
                        yield Served(tier, fitted, delta)
                    return
            except BreakerOpen as exc:
                errors.append(exc.message)
            except _Failed as failed:
                errors.append(f"{endpoint.breaker.name}: {failed.message}")
    raise Unavailable("no model could answer: " + "; ".join(errors))


class _Failed(Exception):
    """An endpoint failed before its first delta: the next one may answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _guard(endpoint: Endpoint, params: GenerateParams) -> AbstractContextManager[Attempt]:
    return unguarded() if params.model_version else endpoint.breaker.attempt()


async def _attempt(
    call: Call,
    tier: Tier,
    endpoint: Endpoint,
    version: str,
    fitted: Fitted,
    params: GenerateParams,
    stream: bool,
    attempt: Attempt,
) -> AsyncIterator[Delta]:
    """One endpoint's deltas; its verdict on `attempt`. Raises _Failed for a failure before
    the first delta, Unavailable or DeadlineExceeded for one after it."""
    if call.remaining() < MIN_ATTEMPT_S:
        raise DeadlineExceeded("the request's deadline passed")
    span = _chat_span(tier, endpoint.llm.target, params, fitted.max_tokens)
    last: Delta | None = None
    sampling = Sampling(
        fitted.max_tokens, params.temperature, params.top_p, params.stop, params.seed, params.user
    )
    try:
        async for delta in endpoint.llm.stream(
            tier.config.model,
            version,
            fitted.prompt,
            sampling,
            stream=stream,
            timeout_s=call.remaining(),
            headers=telemetry.triton_traceparent(span),
        ):
            if last is None:
                attempt.succeeded()
            last = delta
            yield delta
        if last is None:
            attempt.succeeded()
    except (Unavailable, DeadlineExceeded) as exc:
        span.set_status(StatusCode.ERROR, exc.message)
        # The request's own deadline is not the endpoint's failure: no verdict then.
        late = isinstance(exc, DeadlineExceeded) and call.remaining_s() < MIN_ATTEMPT_S
        if not late:
            attempt.failed()
        if last is not None:
            kind = DeadlineExceeded if late else Unavailable
            raise kind(f"generation failed after it started: {exc.message}") from exc
        call.remaining()
        raise _Failed(exc.message) from exc
    finally:
        _end_chat(span, last)


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
            "gen_ai.provider.name": "openai" if tier.config.base_url else "triton",
            "gen_ai.request.model": tier.config.model,
            "gen_ai.request.max_tokens": max_tokens,
            "gen_ai.request.temperature": params.temperature,
            "server.address": target,
            "ragmesh.tier": tier.name,
        },
    )


def _end_chat(span: trace.Span, last: Delta | None) -> None:
    if last is not None:
        reasons = [last.finish_reason] if last.finish_reason else []
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": max(last.prompt_tokens, 0),
                "gen_ai.usage.output_tokens": max(last.completion_tokens, 0),
                "gen_ai.response.finish_reasons": reasons,
            }
        )
    span.end()
