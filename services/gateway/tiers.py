"""Model tiers: which Triton model answers a request, and how much prompt it takes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.gateway.breaker import Breaker
from services.gateway.config import GatewayConfig, TierConfig
from services.gateway.llm import TritonLLM
from services.gateway.prompt import Source, build_prompt, plain_prompt

# A conservative estimate for English text under BPE and WordPiece vocabularies.
CHARS_PER_TOKEN = 3.0


@dataclass(frozen=True)
class Endpoint:
    """A Triton server that serves a tier's model, behind its own breaker."""

    llm: TritonLLM
    breaker: Breaker


@dataclass(frozen=True)
class Tier:
    name: str
    config: TierConfig
    # The local Triton first, then the other regions' (a tier with its own target: just it).
    endpoints: list[Endpoint]

    def version(self, pinned: str) -> str:
        if pinned and not pinned.isdigit():
            raise InvalidArgument("model_version: must be digits", field="model_version")
        return pinned or self.config.version

    def prompt(
        self, question: str, sources: Sequence[Source], max_tokens: int, *, grounded: bool = True
    ) -> str:
        """The prompt with as many of the best sources as fit the tier's context window;
        not `grounded` (a request that skips retrieval): the question alone.

        Sources are dropped first, lowest-ranked first; the question is never cut.
        """
        budget = self.config.context_tokens - max_tokens
        if budget <= 0:
            raise InvalidArgument(
                f"max_tokens: {max_tokens} leaves no room in the {self.name} tier's context "
                f"window of {self.config.context_tokens} tokens",
                field="max_tokens",
            )
        kept = list(sources)
        while True:
            prompt = build_prompt(question, kept) if grounded else plain_prompt(question)
            if math.ceil(len(prompt) / CHARS_PER_TOKEN) <= budget:
                return prompt
            if not kept:
                raise InvalidArgument(
                    f"query: too long for the {self.name} tier's context window of "
                    f"{self.config.context_tokens} tokens with max_tokens {max_tokens}",
                    field="query",
                )
            kept.pop()


class Tiers:
    """The declared tiers; one Triton client per distinct target, one breaker per model on it."""

    def __init__(
        self, config: GatewayConfig, client: Callable[[str], TritonLLM] = TritonLLM
    ) -> None:
        clients: dict[str, TritonLLM] = {}
        self._tiers: dict[str, Tier] = {}
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
            self._tiers[name] = Tier(name, tier, endpoints)
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
