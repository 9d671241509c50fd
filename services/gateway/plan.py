"""A generation's plan, decided before any call: the request checked, the tier the routing
policy picks, and the most it can spend (what admission reserves)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import tokens
from services.common.errors import InvalidArgument, Unavailable
from services.common.validation import check_range
from services.config.gateway import GatewayConfig
from services.contract.prompt import ROLES
from services.control.admission import Charge
from services.control.policy import CRITICALITIES, Route
from services.gateway.control import Control
from services.gateway.tiers import Tier, Tiers
from services.gateway.values import Call, GenerateParams

MAX_STOP, MAX_STOP_CHARS = 4, 64
MAX_USER_CHARS = 256
MAX_TURNS = 64
# A turn may be longer than a question (an assistant's answer): this many times the limit.
TURN_CHARS_PER_QUERY_CHAR = 8


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

    def plan(self, call: Call, params: GenerateParams, *, stream: bool = True) -> Plan:
        """Validates the request, decides its tier (the routing policy) and the most it can
        spend (`stream`: a streamed answer, which a continuation may read again); refuses a
        question that cannot fit the tier even without sources before any retrieval."""
        max_tokens = check_range(
            params.max_tokens or self.config.default_max_tokens,
            1,
            self.config.max_max_tokens,
            "max_tokens",
        )
        if not 0.0 <= params.temperature <= 2.0:
            raise InvalidArgument("temperature: must be 0..2", field="temperature")
        if params.priority and params.priority not in CRITICALITIES:  # a tier named or not
            raise InvalidArgument(
                f"priority: must be one of {', '.join(CRITICALITIES)}, not "
                f"{params.priority[:32]!r}",
                field="priority",
            )
        self._check_sampling(params)
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
        fitted = tier.prompt(
            params.query,
            [],
            max_tokens,
            grounded=not params.skip_retrieval,
            history=params.history,
        )
        # A pinned version asks for that model: no other tier stands in for it.
        chain = [tier] if params.model_version else self._tiers.chain(tier)
        cacheable = params.temperature == 0.0 and not params.bypass_cache
        worst = self._worst(chain, max_tokens, tokens.bound(fitted.prompt), params, stream)
        return Plan(tier, version, max_tokens, cacheable, chain, worst, route)

    def _check_sampling(self, params: GenerateParams) -> None:
        """top_p, stop, user and the conversation, within OpenAI's bounds where it sets
        them (4 stop strings); InvalidArgument naming the field otherwise."""
        if not 0.0 < params.top_p <= 1.0:
            raise InvalidArgument("top_p: must be in (0, 1]", field="top_p")
        stops_fit = all(0 < len(s) <= MAX_STOP_CHARS for s in params.stop)
        if len(params.stop) > MAX_STOP or not stops_fit:
            raise InvalidArgument(
                f"stop: at most {MAX_STOP} strings of 1..{MAX_STOP_CHARS} characters",
                field="stop",
            )
        if params.seed is not None and not -(2**63) <= params.seed < 2**64:
            raise InvalidArgument("seed: must be a 64-bit integer", field="seed")
        if len(params.user) > MAX_USER_CHARS:
            raise InvalidArgument(f"user: over {MAX_USER_CHARS} characters", field="user")
        if len(params.history) > MAX_TURNS:
            raise InvalidArgument(f"history: over {MAX_TURNS} turns", field="history")
        limit = self.config.max_query_chars * TURN_CHARS_PER_QUERY_CHAR
        for i, turn in enumerate(params.history):
            if turn.role not in ROLES:
                raise InvalidArgument(
                    f"history[{i}].role: must be one of {', '.join(ROLES)}",
                    field=f"history[{i}].role",
                )
            if not turn.content.strip() or len(turn.content) > limit:
                raise InvalidArgument(
                    f"history[{i}].content: must hold 1..{limit} characters",
                    field=f"history[{i}].content",
                )

    def _worst(
        self,
        chain: list[Tier],
        max_tokens: int,
        question: int,
        params: GenerateParams,
        stream: bool,
    ) -> Charge:
        """The most a request can spend on any tier of `chain`: the tier's window when it
        retrieves (sources may fill it), else its question (`question`: the plain prompt's
        bound) and template, plus the answer tokens. A stream continued after a cut reads its
        prompt again with the answer so far, on the tier asked (or, where it lets another
        model go on, a later tier that continues), `continuations` times at most: each adds
        a prompt and an answer's worth of input tokens. A unary answer is never continued."""
        tokens_, cost = 0, 0
        first = chain[0].config
        for t in chain:
            may = t is chain[0] or (first.continue_on_fallback and t.config.continuations > 0)
            again = first.continuations if stream and may else 0
            window = t.config.context_tokens
            answer = min(max_tokens, window - 1)
            prompt = window - answer
            if params.skip_retrieval:
                prompt = min(question + t.config.template_tokens, prompt)
            read = prompt + again * (prompt + answer)
            tokens_ = max(tokens_, read + answer)
            if self._control is not None:
                cost = max(cost, self._control.cost_micro_usd(t.name, read, answer))
        return Charge(1, tokens_, cost)

    def broken(self, tier: str) -> bool:
        """Whether `tier` cannot answer here: every endpoint's breaker open, or a tier this
        gateway does not serve (so the policy moves non-critical traffic past it)."""
        if not self._tiers.has(tier):
            return True
        return all(e.breaker.state == "open" for e in self._tiers.get(tier).endpoints)

    def tier_names(self) -> list[str]:
        return [t.name for t in self._tiers.all()]

    def allowed_tiers(self, tenant: str) -> list[str]:
        """The tiers of this gateway that `tenant` may name: the policy's for it, in its
        order (every tier without a control plane)."""
        if self._control is None:
            return self.tier_names()
        return [t for t in self._control.policy.policy.allowed(tenant) if self._tiers.has(t)]
