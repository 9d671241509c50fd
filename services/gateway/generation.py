"""Generation across tiers and endpoints: the first that answers, each behind its breaker.

An endpoint that fails before its first delta, or gives none within the tier's
`first_token_timeout_s` (a hung model), costs the client nothing: the next one is tried
while the deadline allows, then the next tier (the answer says which). One that fails
after it has streamed, or goes the tier's `inter_token_timeout_s` without a token (stalled),
is continued where its tier allows (`continuations`): the tier's next endpoint is asked the
same prompt with the text already streamed as the start of the assistant's turn
(`assistant_prefix`), and only what follows is streamed, so the client reads one answer.
Otherwise, or when no endpoint is left, the response ends with UNAVAILABLE
(DEADLINE_EXCEEDED when the request's own deadline cut it), never with a clean end. The
request's own mistakes (a prompt that cannot fit, a pinned version not served) raise at
once: no other endpoint is tried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import StatusCode

from services.common import telemetry
from services.common.errors import BreakerOpen, DeadlineExceeded, Unavailable
from services.contract.prompt import Source
from services.gateway import metrics
from services.gateway.breaker import Attempt, unguarded
from services.gateway.tiers import Endpoint, Fitted, Tier
from services.gateway.values import Call, Continuation, GenerateParams
from services.triton.llm import Delta, Sampling

# An attempt on a model needs at least this much time left to be worth starting.
MIN_ATTEMPT_S = 0.05
STALLED = "stalled:"  # how a stall's error begins
_TRACER = trace.get_tracer("ragmesh.gateway")


@dataclass(frozen=True)
class Served:
    """A delta (its counts over the whole answer, continuations included), the tier that
    produced it, the prompt it was asked with, and the continuations so far."""

    tier: Tier
    fitted: Fitted
    delta: Delta
    continued: tuple[Continuation, ...] = ()


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
    sent = _Sent(chain[0])
    for tier in chain:
        if sent.text and not sent.may_continue_on(tier):
            continue  # cut: only a tier that continues, and a later one where the first allows
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
                        call, tier, endpoint, asked, sent.go_on(fitted), params, stream, attempt
                    ):
                        yield Served(tier, fitted, sent.add(delta, tier, endpoint), sent.continued)
                    return
            except BreakerOpen as exc:
                errors.append(exc.message)
            except _Failed as failed:
                errors.append(f"{endpoint.breaker.name}: {failed.message}")
            except _Cut as cut:
                errors.append(f"{endpoint.breaker.name}: {cut.reason}")
                if not sent.may_go_on(call):
                    raise cut.error from cut
                sent.cut(endpoint, cut.reason)
                if sent.completion_tokens >= fitted.max_tokens:  # it had said all it could
                    yield Served(tier, fitted, sent.ended(), sent.continued)
                    return
    if sent.text:  # cut, and no endpoint left to go on
        raise Unavailable(f"generation failed after it started: {'; '.join(errors)}")
    raise Unavailable("no model could answer: " + "; ".join(errors))


class _Sent:
    """What a stream has sent of the answer, over its endpoints (and tiers): the text, the
    counts of the parts before the current one, and the continuations. `first`: the tier
    asked, whose `continuations` and `continue_on_fallback` bound them."""

    def __init__(self, first: Tier) -> None:
        self._first = first
        self.text = ""
        self.prompt_tokens = self.completion_tokens = 0  # the finished parts'
        self.continued: tuple[Continuation, ...] = ()
        self._last: Delta | None = None
        self._last_at = 0.0  # when the last delta came
        self._source = ""
        self._reason = ""
        self._version = ""  # the model version of the last part cut

    def go_on(self, fitted: Fitted) -> Fitted:
        """The prompt for the next endpoint: as fitted, its answer the rest of the tokens."""
        if not self.text:
            return fitted
        left = max(fitted.max_tokens - self.completion_tokens, 1)
        return dataclasses.replace(fitted, max_tokens=left, prefix=self.text)

    def add(self, delta: Delta, tier: Tier, endpoint: Endpoint) -> Delta:
        """The delta with counts over the whole answer; the first after a cut closes its
        Continuation record (and is counted in the metrics), text or not: a continuation
        that only ends the answer (its model had said all) was still asked and paid for."""
        now = time.monotonic()
        if self._source:
            added = now - self._last_at
            record = Continuation(
                self._source,
                endpoint.llm.target,
                self._reason,
                self.completion_tokens,
                added,
                tier.name,
            )
            self.continued = (*self.continued, record)
            self._source = ""
            why = "stalled" if self._reason.startswith(STALLED) else "failed"
            metrics.CONTINUATIONS.labels(self._first.name, why).inc()
            metrics.CONTINUATION_SECONDS.observe(added)
        self._last, self._last_at = delta, now
        self.text += delta.text
        if not self.continued and not self._source:
            return delta  # one part: its counts as they are (-1: the model reports none)
        return dataclasses.replace(
            delta,
            prompt_tokens=_plus(self.prompt_tokens, delta.prompt_tokens),
            completion_tokens=_plus(self.completion_tokens, delta.completion_tokens),
        )

    def may_go_on(self, call: Call) -> bool:
        """Whether a cut stream may be continued: the tier asked continues, has
        continuations left, and the request has time for another attempt."""
        done = len(self.continued) + bool(self._source)
        return done < self._first.config.continuations and call.remaining_s() >= MIN_ATTEMPT_S

    def may_continue_on(self, tier: Tier) -> bool:
        """Whether `tier` may go on with a stream cut in an earlier tier of the chain: one
        whose model continues, where the tier asked allows another model."""
        return self._first.config.continue_on_fallback and tier.config.continuations > 0

    def cut(self, endpoint: Endpoint, reason: str) -> None:
        """The current part ended by a failure: its counts kept, a continuation awaited."""
        if self._last is not None:
            self.prompt_tokens += max(self._last.prompt_tokens, 0)
            self.completion_tokens += max(self._last.completion_tokens, 0)
            self._version = self._last.model_version
        self._last = None
        self._source, self._reason = endpoint.llm.target, reason

    def ended(self) -> Delta:
        """The last delta of a stream cut after its last token (max_tokens reached): no text,
        finish "length", the counts so far; nothing to continue."""
        self._source = ""
        return Delta("", self.prompt_tokens, self.completion_tokens, self._version, "length")


def _plus(before: int, count: int) -> int:
    """A running count over the parts; -1 (none reported) stays -1."""
    return before + count if count >= 0 else count


class _Failed(Exception):
    """An endpoint failed before its first delta: the next one may answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Cut(Exception):
    """An endpoint failed after its first delta: `error` is what the client gets unless the
    stream is continued."""

    def __init__(self, error: Unavailable | DeadlineExceeded, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason  # the endpoint's own error


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
    """One endpoint's deltas (going on from `fitted.prefix` where it holds the answer so far);
    its verdict on `attempt`. Raises _Failed for a failure before the first delta (no delta
    within the tier's first_token_timeout_s included), _Cut for one after it (a stall past
    its inter_token_timeout_s included)."""
    if call.remaining() < MIN_ATTEMPT_S:
        raise DeadlineExceeded("the request's deadline passed")
    span = _chat_span(tier, endpoint.llm.target, params, fitted.max_tokens)
    last: Delta | None = None
    sampling = Sampling(
        fitted.max_tokens, params.temperature, params.top_p, params.stop, params.seed, params.user
    )
    deltas = endpoint.llm.stream(
        tier.config.model,
        version,
        fitted.prompt,
        sampling,
        stream=stream,
        timeout_s=call.remaining(),
        headers=telemetry.triton_traceparent(span),
        prefix=fitted.prefix,
        shared=tier.config.shared_stream,
    )
    first_s, stall_s = tier.config.first_token_timeout_s, tier.config.inter_token_timeout_s
    try:
        while True:
            budget = stall_s if last is not None else first_s
            try:
                # A timer, not wait_for's task a token: this is every streamed token's path.
                async with asyncio.timeout(budget or None) as timer:
                    delta = await anext(deltas)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                if not timer.expired():
                    raise
                if last is None:
                    raise Unavailable(f"no first token in {first_s:g} s") from exc
                raise Unavailable(f"{STALLED} no token for {stall_s:g} s") from exc
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
        if last is not None and last.finish_reason:
            return  # failed after its last delta: the answer is whole
        if last is not None:
            kind = DeadlineExceeded if late else Unavailable
            error = kind(f"generation failed after it started: {exc.message}")
            raise _Cut(error, exc.message) from exc
        call.remaining()
        raise _Failed(exc.message) from exc
    finally:
        await deltas.aclose()
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
