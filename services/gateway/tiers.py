"""Model tiers: which Triton model answers a request, and how much prompt it takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common import tokens
from services.common.errors import InvalidArgument
from services.config.gateway import MODEL_VERSION, GatewayConfig, TierConfig
from services.contract.prompt import Source, build_prompt, plain_prompt
from services.gateway.breaker import Breaker
from services.triton.client import TritonClient
from services.triton.llm import TritonLLM


@dataclass(frozen=True)
class Endpoint:
    """A Triton server that serves a tier's model, behind its own breaker."""

    llm: TritonLLM
    breaker: Breaker


@dataclass(frozen=True)
class Fitted:
    """A prompt that fits the tier's window, and the answer tokens left beside it."""

    prompt: str
    max_tokens: int
    sources: int  # how many of the sources it kept


@dataclass(frozen=True)
class Tier:
    name: str
    config: TierConfig
    # The local Triton first, then the other regions' (a tier with its own target: just it).
    endpoints: list[Endpoint]
    # The model's own token count of a prompt, without its template.
    count: tokens.TokenCounter = tokens.bound

    def version(self, pinned: str) -> str:
        """The version to ask for: `pinned`, else the tier's own ("" for Triton's latest)."""
        if pinned and not MODEL_VERSION.fullmatch(pinned):
            raise InvalidArgument(
                "model_version: must be 1 to 18 ASCII digits (a Triton model version)",
                field="model_version",
            )
        return pinned or self.config.version

    def prompt(
        self, question: str, sources: Sequence[Source], max_tokens: int, *, grounded: bool = True
    ) -> Fitted:
        """The prompt with as many of the best sources as leave `max_tokens` for the answer
        in the tier's window (counted with the model's tokenizer and template); not
        `grounded` (a request that skips retrieval): the question alone.

        Sources are dropped first, lowest-ranked first; the question is never cut. A question
        that fits with no sources but not with `max_tokens` beside it is still asked: the
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
        kept = list(sources) if grounded else []
        template = self.config.template_tokens
        while True:
            prompt = build_prompt(question, kept) if grounded else plain_prompt(question)
            if tokens.bound(prompt) + template + max_tokens <= window:  # fits: no need to count
                return Fitted(prompt, max_tokens, len(kept))
            size = self.count(prompt) + template
            if size + max_tokens <= window or (not kept and size < window):
                return Fitted(prompt, min(max_tokens, window - size), len(kept))
            if not kept:
                raise InvalidArgument(
                    f"query: {size} tokens with the {self.name} tier's prompt, over its "
                    f"context window of {window} tokens",
                    field="query",
                )
            kept.pop()


def _connect(target: str) -> TritonLLM:
    return TritonLLM(TritonClient(target))


class Tiers:
    """The declared tiers; one Triton client per distinct target, one breaker per model on it."""

    def __init__(
        self, config: GatewayConfig, client: Callable[[str], TritonLLM] = _connect
    ) -> None:
        clients: dict[str, TritonLLM] = {}
        self._tiers: dict[str, Tier] = {}
        counters: dict[str, tokens.TokenCounter] = {}
        for name, tier in config.tiers.items():
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
            if tier.tokenizer not in counters:
                counters[tier.tokenizer] = _counter(name, tier.tokenizer)
            self._tiers[name] = Tier(name, tier, endpoints, counters[tier.tokenizer])
        self._clients = list(clients.values())
        self.default = config.default_tier

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


def _counter(name: str, source: str) -> tokens.TokenCounter:
    """The tier's token counter; a tokenizer that cannot be read fails the start, naming it."""
    try:
        return tokens.counter(source)
    except (OSError, ValueError) as exc:
        raise ValueError(f"gateway.tiers.{name}.tokenizer: {exc}") from exc
