"""Model tiers: which model (Triton's, or an OpenAI-compatible upstream's) answers a
request, and how much prompt it takes."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common import tokens
from services.common.errors import InvalidArgument
from services.config.gateway import MODEL_VERSION, GatewayConfig, TierConfig
from services.contract.prompt import Source, Turn, build_prompt, plain_prompt
from services.contract.relevance import compact
from services.gateway.breaker import Breaker
from services.gateway.upstream import UpstreamLLM
from services.triton.client import TritonClient
from services.triton.llm import Delta, Sampling, TritonLLM


class LLM(Protocol):
    """A server of a tier's model, as generation asks it: TritonLLM or UpstreamLLM."""

    target: str  # its address, in breaker names, spans and the status

    def stream(
        self,
        model: str,
        version: str,
        prompt: str,
        sampling: Sampling,
        *,
        stream: bool,
        timeout_s: float,
        headers: dict[str, str],
        prefix: str = "",
        shared: bool = False,
    ) -> AsyncGenerator[Delta]: ...

    async def ready(self, model: str, version: str = "") -> bool: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Endpoint:
    """A server that serves a tier's model, behind its own breaker."""

    llm: LLM
    breaker: Breaker


@dataclass(frozen=True)
class Fitted:
    """A prompt that fits the tier's window, and the answer tokens left beside it."""

    prompt: str
    max_tokens: int
    sources: int  # how many of the sources it kept
    prefix: str = ""  # the answer so far, which a continuation goes on from


@dataclass(frozen=True)
class Tier:
    name: str
    config: TierConfig
    # The local Triton first, then the other regions' (a tier with its own target: just it);
    # an upstream tier: its one server, 1 + retries times, behind one breaker.
    endpoints: list[Endpoint]
    # The model's own token count of a prompt, without its template.
    count: tokens.TokenCounter = tokens.bound

    def version(self, pinned: str) -> str:
        """The version to ask for: `pinned`, else the tier's own ("" for Triton's latest).
        An upstream tier has no versions: a pinned one is the request's mistake."""
        if pinned and self.config.base_url:
            raise InvalidArgument(
                f"model_version: the {self.name} tier's upstream serves no model versions",
                field="model_version",
            )
        if pinned and not MODEL_VERSION.fullmatch(pinned):
            raise InvalidArgument(
                "model_version: must be 1 to 18 ASCII digits (a Triton model version)",
                field="model_version",
            )
        return pinned or self.config.version

    def prompt(
        self,
        question: str,
        sources: Sequence[Source],
        max_tokens: int,
        *,
        grounded: bool = True,
        history: Sequence[Turn] = (),
    ) -> Fitted:
        """The prompt with as much of the conversation (`history`, oldest first) and as many
        of the best sources as leave `max_tokens` for the answer in the tier's window
        (counted with the model's tokenizer and template); not `grounded` (a request that
        skips retrieval): the conversation and the question alone. A tier with
        `source_sentences` reads each source cut to its most relevant sentences.

        What gives way, in order: the oldest user and assistant turns, then the sources,
        lowest-ranked first, then the system turns, oldest first; the question is never cut.
        A question that fits alone but not with `max_tokens` beside it is still asked: the
        answer gets what is left and ends with finish_reason "length" if it needs more.
        Raises InvalidArgument naming `max_tokens` when it leaves no room for a prompt, and
        `query` when the question alone leaves no room for one answer token.
        """
        window = self.config.context_tokens
        if max_tokens >= window - self.config.template_tokens:
            raise InvalidArgument(
                f"max_tokens: {max_tokens} leaves no room in the {self.name} tier's context "
                f"window of {window} tokens",
                field="max_tokens",
            )
        if not grounded:
            kept = []
        elif self.config.source_sentences:
            kept = compact(question, sources, self.config.source_sentences)
        else:
            kept = list(sources)
        turns = list(history)
        template = self.config.template_tokens
        while True:
            prompt = (
                build_prompt(question, kept, turns) if grounded else plain_prompt(question, turns)
            )
            if tokens.bound(prompt) + template + max_tokens <= window:  # fits: no need to count
                return Fitted(prompt, max_tokens, len(kept))
            size = self.count(prompt) + template
            alone = not kept and not turns
            if size + max_tokens <= window or (alone and size < window):
                return Fitted(prompt, min(max_tokens, window - size), len(kept))
            if alone:
                raise InvalidArgument(
                    f"query: {size} tokens with the {self.name} tier's prompt, over its "
                    f"context window of {window} tokens",
                    field="query",
                )
            _give_way(turns, kept)


def _give_way(turns: list[Turn], kept: list[Source]) -> None:
    """Drops what gives way first (Tier.prompt): the oldest user or assistant turn, else the
    lowest-ranked source, else the oldest system turn."""
    spoken = next((i for i, t in enumerate(turns) if t.role != "system"), None)
    if spoken is not None:
        del turns[spoken]
    elif kept:
        kept.pop()
    else:
        del turns[0]


def _connect(target: str) -> TritonLLM:
    return TritonLLM(TritonClient(target))


class Tiers:
    """The declared tiers; one Triton client per distinct target, one breaker per model on it;
    one client and one breaker per upstream tier. Raises ValueError, naming the field, for a
    tokenizer it cannot read or an upstream key's variable that is not set."""

    def __init__(
        self, config: GatewayConfig, client: Callable[[str], TritonLLM] = _connect
    ) -> None:
        clients: dict[str, TritonLLM] = {}
        self._tiers: dict[str, Tier] = {}
        counters: dict[str, tokens.TokenCounter] = {}
        upstreams: list[UpstreamLLM] = []
        for name, tier in config.tiers.items():
            if tier.base_url:
                upstreams.append(_upstream(name, tier))
                breaker = Breaker(
                    f"upstream {tier.base_url}/{tier.model}",
                    config.breaker_failures,
                    config.breaker_open_s,
                )
                endpoints = [Endpoint(upstreams[-1], breaker)] * (1 + tier.retries)
                self._add(name, tier, endpoints, counters)
                continue
            targets = (
                [tier.target]
                if tier.target
                else [config.triton_target, *config.triton_fallback_targets]
            )
            for target in targets:
                if target not in clients:
                    clients[target] = client(target)
            endpoints = [
                Endpoint(
                    clients[target],
                    Breaker(
                        f"triton {target}/{tier.model}",
                        config.breaker_failures,
                        config.breaker_open_s,
                    ),
                )
                for target in targets
            ]
            self._add(name, tier, endpoints, counters)
        self._clients: list[LLM] = [*clients.values(), *upstreams]
        self.default = config.default_tier

    def _add(
        self,
        name: str,
        tier: TierConfig,
        endpoints: list[Endpoint],
        counters: dict[str, tokens.TokenCounter],
    ) -> None:
        if tier.tokenizer not in counters:
            counters[tier.tokenizer] = _counter(name, tier.tokenizer)
        self._tiers[name] = Tier(name, tier, endpoints, counters[tier.tokenizer])

    def get(self, name: str) -> Tier:
        tier = self._tiers.get(name or self.default)
        if tier is None:
            known = ", ".join(sorted(self._tiers))
            raise InvalidArgument(
                f"tier: unknown tier {name[:64]!r}; this gateway has {known}", field="tier"
            )
        return tier

    def has(self, name: str) -> bool:
        return name in self._tiers

    def chain(self, tier: Tier) -> list[Tier]:
        """`tier`, then the tiers that answer when it is down, in order."""
        chain = [tier]
        while chain[-1].config.fallback:
            chain.append(self._tiers[chain[-1].config.fallback])
        return chain

    def all(self) -> list[Tier]:
        return list(self._tiers.values())

    async def close(self) -> None:
        for client in self._clients:
            await client.close()


def _upstream(name: str, tier: TierConfig) -> UpstreamLLM:
    """The upstream tier's client, its key read from the environment now (never shown)."""
    key = ""
    if tier.api_key_env:
        key = os.environ.get(tier.api_key_env, "")
        if not key:
            raise ValueError(
                f"gateway.tiers.{name}.api_key_env: environment variable "
                f"{tier.api_key_env} is not set"
            )
    return UpstreamLLM(tier.base_url, key, connect_timeout_s=tier.connect_timeout_s)


def _counter(name: str, source: str) -> tokens.TokenCounter:
    """The tier's token counter; a tokenizer that cannot be read fails the start, naming it."""
    try:
        return tokens.counter(source)
    except (OSError, ValueError) as exc:
        raise ValueError(f"gateway.tiers.{name}.tokenizer: {exc}") from exc
