"""A generation's plan, decided before any call: the request checked, the tier the routing
policy picks, and the most it can spend (what admission reserves)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import tokens
from services.common.errors import InvalidArgument, Unavailable
from services.common.validation import check_range
from services.config.gateway import GatewayConfig
from services.control.admission import Charge
from services.control.policy import Route
from services.gateway.control import Control
from services.gateway.tiers import Tier, Tiers
from services.gateway.values import Call, GenerateParams


@dataclass(frozen=True)
class Plan:
    """What a generation will ask, decided before any call."""

    tier: Tier
    version: str
    max_tokens: int
    cacheable: bool
    chain: list[Tier]  # the tier, then those that answer when it is down
    worst: Charge  # the most the request can spend: what admission reserves
    route: Route | None


class Planner:
    """`control` None: no routing policy and nothing to reserve (unit tests)."""

    def __init__(self, config: GatewayConfig, tiers: Tiers, control: Control | None) -> None:
        self.config = config
        self._tiers = tiers
        self._control = control

    def check_query(self, query: str) -> str:
        if not query.strip():
            raise InvalidArgument("query: must not be empty", field="query")
        if len(query) > self.config.max_query_chars:
            raise InvalidArgument(
                f"query: {len(query)} characters, over the limit of {self.config.max_query_chars}",
                field="query",
            )
        return query

    def top_k(self, top_k: int) -> int:
        return check_range(top_k or self.config.default_top_k, 1, self.config.max_top_k, "top_k")

    def plan(self, call: Call, params: GenerateParams) -> Plan:
        """Validates the request, decides its tier (the routing policy) and the most it can
        spend; refuses a question that cannot fit the tier even without sources before any
        retrieval."""
        max_tokens = check_range(
            params.max_tokens or self.config.default_max_tokens,
            1,
            self.config.max_max_tokens,
            "max_tokens",
        )
        if not 0.0 <= params.temperature <= 2.0:
            raise InvalidArgument("temperature: must be 0..2", field="temperature")
        route = None
        if params.tier:
            self._tiers.get(params.tier)  # a tier this gateway does not have: 400, not 403
        if self._control is not None:
            route = self._control.route(call.tenant, params.priority, params.tier, self.broken)
            if not self._tiers.has(route.tier):  # the policy's, not the client's mistake
                raise Unavailable(
                    f"the routing policy chose tier {route.tier!r}, which this gateway does "
                    f"not serve: ask another region"
                )
            tier = self._tiers.get(route.tier)
        else:
            tier = self._tiers.get(params.tier)
        version = tier.version(params.model_version)
        self.check_query(params.query)
        fitted = tier.prompt(params.query, [], max_tokens, grounded=not params.skip_retrieval)
        # A pinned version asks for that model: no other tier stands in for it.
        chain = [tier] if params.model_version else self._tiers.chain(tier)
        cacheable = params.temperature == 0.0 and not params.bypass_cache
        worst = self._worst(chain, max_tokens, tokens.bound(fitted.prompt), params)
        return Plan(tier, version, max_tokens, cacheable, chain, worst, route)

    def _worst(
        self, chain: list[Tier], max_tokens: int, question: int, params: GenerateParams
    ) -> Charge:
        """The most a request can spend on any tier of `chain`: the tier's window when it
        retrieves (sources may fill it), else its question (`question`: the plain prompt's
        bound) and template, plus the answer tokens."""
        tokens_, cost = 0, 0
        for t in chain:
            window = t.config.context_tokens
            answer = min(max_tokens, window - 1)
            prompt = window - answer
            if params.skip_retrieval:
                prompt = min(question + t.config.template_tokens, prompt)
            tokens_ = max(tokens_, prompt + answer)
            if self._control is not None:
                cost = max(cost, self._control.cost_micro_usd(t.name, prompt, answer))
        return Charge(1, tokens_, cost)

    def broken(self, tier: str) -> bool:
        """Whether `tier` cannot answer here: every endpoint's breaker open, or a tier this
        gateway does not serve (so the policy moves non-critical traffic past it)."""
        if not self._tiers.has(tier):
            return True
        return all(e.breaker.state == "open" for e in self._tiers.get(tier).endpoints)

    def tier_names(self) -> list[str]:
        return [t.name for t in self._tiers.all()]
