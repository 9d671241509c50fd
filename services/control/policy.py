"""The routing policy: which model tier answers, per tenant and request criticality.

The policy is data, a YAML file (`config/policy.yaml`) checked against `policy.schema.json`
(JSON Schema 2020-12) and then for what a schema cannot say: every tier named is declared
under `tiers`, `next` chains end, and a tenant's criticality and soft-cap tiers are among the
tiers it may use. A file that fails raises PolicyError naming the file, the line and the
field. Prices are US dollars per 1000 tokens; latencies are milliseconds.

`Policy.route` applies the rules in order and returns the tier with its reason (one of
REASONS) and a sentence for the response, the trace and logs. `PolicyFile` reloads the file
when it changes and keeps the last good policy; `RollingP95` feeds the latency guardrail.
No gRPC, no network.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from services.common.errors import InvalidArgument, PermissionDenied

LOGGER = logging.getLogger(__name__)
CRITICALITIES = ("critical", "standard", "batch")
REASONS = ("requested", "criticality", "latency_guardrail", "breaker_open", "soft_cap")
_Path = Sequence[str | int]


class PolicyError(ValueError):
    """The policy file cannot be read or is invalid: "<source>:<line>: <field>: <problem>".

    `line` is 1-based (0: the file as a whole, e.g. unreadable); `field` is the dotted path
    of the offending value, e.g. "tenants.acme.criticality.batch" ("" for a YAML syntax
    error).
    """

    def __init__(self, source: str, line: int, field: str, problem: str) -> None:
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")
        self.source = source
        self.line = line
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Price:
    """US dollars per 1000 input and per 1000 output tokens."""

    input_per_1k: float
    output_per_1k: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """The cost of one call, in US dollars."""
        return (input_tokens * self.input_per_1k + output_tokens * self.output_per_1k) / 1000


@dataclass(frozen=True)
class TierHealth:
    """What the gateway knows of a tier right now.

    `ttft_p95_ms`: the rolling p95 time to first token, None while there are too few samples.
    """

    ttft_p95_ms: float | None
    breaker_open: bool


@dataclass(frozen=True)
class Route:
    """The tier that answers; `reason` is one of REASONS, `detail` a sentence saying why."""

    tier: str
    reason: str
    detail: str


@dataclass(frozen=True)
class _Tier:
    price: Price
    ttft_p95_budget_ms: float | None
    next: str | None


@dataclass(frozen=True)
class Guardrails:
    """A tenant's guardrails (docs/control-plane.md, "Guardrails").

    `prompt_injection`: what a question that reads as an injection gets: "block"
    (INVALID_ARGUMENT, ErrorInfo reason PROMPT_INJECTION), "flag" (answered, and said so) or
    "allow" (not checked). `document_injection`: what a source flagged at ingest gets:
    "drop" (left out of the prompt), "fence" (kept, marked as suspect data) or "allow".
    `groundedness_floor`: the least share (0..1) of an answer's sentences its sources must
    support; 0 turns the check off. `ungrounded`: below the floor, "flag" the answer or
    "replace" it with `replace_tier`'s (an extractive tier's) answer from the same sources.
    `redact_pii`: emails, phone and card numbers, keys and tokens are redacted from the
    question, the conversation and the sources before a model reads them.
    `telemetry_prompts`: the question goes into the request's span in clear (after the same
    redaction); else telemetry carries its hash only.
    """

    prompt_injection: str = "flag"
    document_injection: str = "fence"
    groundedness_floor: float = 0.0
    ungrounded: str = "flag"
    replace_tier: str | None = None
    redact_pii: bool = False
    telemetry_prompts: bool = False

    @property
    def shaping(self) -> tuple[object, ...]:
        """The fields that change an answer (what a model reads, what may replace it): part
        of a cached answer's scope, so a policy change never serves an answer made under
        the old one."""
        return (
            self.document_injection,
            self.groundedness_floor,
            self.ungrounded,
            self.replace_tier,
            self.redact_pii,
        )


@dataclass(frozen=True)
class _Plan:
    """A tenant's effective plan: its tiers, a tier per criticality, its soft-cap tier."""

    tiers: tuple[str, ...]
    criticality: Mapping[str, str]
    over_soft_cap: str | None
    semantic_cache: frozenset[str] = frozenset()  # criticalities that may use it
    guardrails: Guardrails = dataclasses.field(default_factory=lambda: Guardrails())


class Policy:
    """A checked routing policy, immutable; build it with `parse` or `load`."""

    def __init__(
        self, tiers: Mapping[str, _Tier], default: _Plan, tenants: Mapping[str, _Plan]
    ) -> None:
        self._tiers = dict(tiers)
        self._default = default
        self._tenants = dict(tenants)

    @classmethod
    def parse(cls, text: str, source: str = "policy") -> Policy:
        """The policy in YAML `text`; `source` names it in errors. Raises PolicyError."""
        doc = _Document(text, source)
        errors = [doc.schema_error(e) for e in _validator().iter_errors(doc.data)]
        if errors:
            raise min(errors, key=lambda e: (e.line, e.field))
        return _build(doc)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """The policy in the YAML file at `path`. Raises PolicyError (also if unreadable)."""
        return cls.parse(_read(Path(path)), str(path))

    def price(self, tier: str) -> Price:
        """The tier's prices; Price(0, 0) for a tier without a price entry."""
        found = self._tiers.get(tier)
        return found.price if found else Price(0.0, 0.0)

    @property
    def tiers(self) -> tuple[str, ...]:
        """Every tier the policy declares."""
        return tuple(self._tiers)

    def semantic_cache(self, tenant: str, criticality: str) -> bool:
        """Whether `tenant`'s requests of `criticality` ("" is standard) may take a cached
        answer to a question worded differently."""
        return (criticality or "standard") in self._plan(tenant).semantic_cache

    def guardrails(self, tenant: str) -> Guardrails:
        """`tenant`'s guardrails (default's where it sets none, field by field)."""
        return self._plan(tenant).guardrails

    def allowed(self, tenant: str) -> tuple[str, ...]:
        """The tiers `tenant` may use, in the policy's order."""
        return self._plan(tenant).tiers

    def route(
        self,
        tenant: str,
        criticality: str,
        requested_tier: str,
        health: Callable[[str], TierHealth],
        over_soft_cap: bool,
    ) -> Route:
        """The tier for one request of `tenant`, and why.

        1. A non-empty `requested_tier` is honoured as is when the tenant may use it, else
           PermissionDenied (field "tier"). 2. Else the tenant's tier for `criticality` (""
           means "standard"; an unknown one is InvalidArgument, field "priority"). For
           standard and batch traffic only: 3. past the soft cap (`over_soft_cap`), the
           tenant's soft-cap tier; 4. while the tier's breaker is open or its p95 time to
           first token (`health(tier)`) is over budget, its `next` tier if the tenant may
           use it, along the chain. The reason is the first rule that moved the traffic;
           the detail names every move.
        """
        plan = self._plan(tenant)
        if requested_tier:
            if requested_tier not in plan.tiers:
                raise PermissionDenied(
                    f"tier: tenant {tenant!r} may not use tier {requested_tier[:64]!r}; "
                    f"allowed: {', '.join(plan.tiers)}",
                    field="tier",
                )
            return Route(requested_tier, "requested", f"tier {requested_tier} requested")
        kind = criticality or "standard"
        if kind not in CRITICALITIES:
            raise InvalidArgument(
                f"priority: must be one of {', '.join(CRITICALITIES)}, not {kind[:32]!r}",
                field="priority",
            )
        tier = plan.criticality[kind]
        route = Route(tier, "criticality", f"{kind} traffic of tenant {tenant} goes to {tier}")
        if kind == "critical":
            return route
        soft = plan.over_soft_cap
        if over_soft_cap and soft is not None and soft != tier and soft in plan.tiers:
            detail = f"tenant {tenant} past its soft budget cap: {kind} traffic moved to {soft}"
            route = Route(soft, "soft_cap", detail)
        return self._guard(route, kind, plan, health)

    def _plan(self, tenant: str) -> _Plan:
        return self._tenants.get(tenant, self._default)

    def _guard(
        self, route: Route, kind: str, plan: _Plan, health: Callable[[str], TierHealth]
    ) -> Route:
        """Rule 4: along `next` while the tier is in trouble (chains end: checked at parse)."""
        tier, reason = route.tier, route.reason
        steps = [route.detail] if reason == "soft_cap" else []
        while (trouble := self._trouble(tier, health(tier))) is not None:
            cause, problem = trouble
            following = self._tiers[tier].next
            if following is None or following not in plan.tiers:
                steps.append(f"{problem}, and no tier to move {kind} traffic to")
                break
            steps.append(f"{problem}: {kind} traffic moved to {following}")
            reason = cause if reason == "criticality" else reason
            tier = following
        if reason == "criticality":  # nothing moved it
            steps.insert(0, route.detail)
        return Route(tier, reason, "; ".join(steps))

    def _trouble(self, tier: str, state: TierHealth) -> tuple[str, str] | None:
        """(reason, sentence) when `tier` should shed non-critical traffic, else None."""
        if state.breaker_open:
            return "breaker_open", f"tier {tier} breaker open"
        budget = self._tiers[tier].ttft_p95_budget_ms
        p95 = state.ttft_p95_ms
        if budget is not None and p95 is not None and p95 > budget:
            return "latency_guardrail", (
                f"tier {tier} p95 TTFT {p95:.0f} ms over its {budget:g} ms budget"
            )
        return None


class PolicyFile:
    """The policy at `path`, reloaded when the file changes; a broken file is refused (logged
    with line and field, kept in `.error`) and the last good policy stays.

    `policy`: the good policy in use. `error`: "" when the file on disk is the one in use,
    else why it was refused. Raises PolicyError if the first load fails.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp = _stamp(self.path)
        self._text = _read(self.path)
        self.policy = Policy.parse(self._text, str(self.path))
        self.error = ""

    def reload(self) -> bool:
        """Re-reads the file when its mtime, size or inode changed; True when a new policy
        took effect. Never raises for a bad file: see `error`."""
        stamp = _stamp(self.path)
        if stamp is not None and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            text = _read(self.path)
            if text == self._text:
                self.error = ""
                return False
            policy = Policy.parse(text, str(self.path))
        except PolicyError as exc:
            if str(exc) != self.error:
                LOGGER.warning("policy refused, the last good one stays: %s", exc)
            self.error = str(exc)
            return False
        self.policy, self._text, self.error = policy, text, ""
        LOGGER.info("policy %s reloaded", self.path)
        return True


class RollingP95:
    """p95 of the samples of the last `window_s` seconds (at most `max_samples`), for the
    latency guardrail.

    `add(value_ms, now)`; `value(now)` is the nearest-rank p95 in milliseconds, None below
    `min_samples`. `now` is a time.monotonic() reading. One event loop: not thread-safe.
    """

    def __init__(
        self, window_s: float = 60.0, max_samples: int = 1000, min_samples: int = 20
    ) -> None:
        if window_s <= 0 or not 1 <= min_samples <= max_samples:
            raise ValueError("RollingP95: window_s > 0 and 1 <= min_samples <= max_samples")
        self.window_s = window_s
        self.min_samples = min_samples
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, value_ms: float, now: float) -> None:
        self._samples.append((now, value_ms))

    def value(self, now: float) -> float | None:
        while self._samples and self._samples[0][0] <= now - self.window_s:
            self._samples.popleft()
        if len(self._samples) < self.min_samples:
            return None
        ordered = sorted(value for _, value in self._samples)
        return ordered[math.ceil(0.95 * len(ordered)) - 1]


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    text = resources.files("services.control").joinpath("policy.schema.json").read_text("utf-8")
    return jsonschema.Draft202012Validator(json.loads(text))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(str(path), 0, "", f"cannot read: {exc}") from exc


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _dotted(path: _Path) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else f".{step}" if out else str(step)
    return out


class _Document:
    """One YAML text: its data, and the line of each field (from `yaml.compose`'s nodes)."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        loader = yaml.SafeLoader(text)
        try:
            self.root: yaml.Node | None = loader.get_single_node()
            self.data: Any = loader.construct_document(self.root) if self.root else None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = ", ".join(p for p in (exc.context, exc.problem) if p)
            raise PolicyError(source, mark.line + 1 if mark else 0, "", problem) from exc
        except yaml.YAMLError as exc:
            raise PolicyError(source, 0, "", str(exc)) from exc
        finally:
            loader.dispose()

    def line(self, path: _Path) -> int:
        """The 1-based line naming the field at `path` (its key's line; an item's own), or
        that of its nearest ancestor present in the text."""
        node, line = self.root, 1
        for step in path:
            child = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:  # the last of duplicate keys wins, as in load
                    if isinstance(key, yaml.ScalarNode) and key.value == str(step):
                        child, line = value, key.start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
                child = node.value[step] if step < len(node.value) else None
                line = child.start_mark.line + 1 if child else line
            if child is None:
                break
            node = child
        return line

    def error(self, path: _Path, problem: str) -> PolicyError:
        return PolicyError(self.source, self.line(path), _dotted(path), problem)

    def schema_error(self, error: jsonschema.ValidationError) -> PolicyError:
        """A jsonschema error as a PolicyError at the offending field."""
        path = list(error.absolute_path)
        problem = error.message
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            path.append(next(str(key) for key in error.instance if key not in known))
            problem = f"unknown field; expected one of {', '.join(known)}"
        elif error.validator == "required":
            path.append(next(key for key in error.validator_value if key not in error.instance))
            problem = "is required"
        elif "propertyNames" in error.absolute_schema_path:
            path.append(str(error.instance))
        if error.validator == "pattern":
            problem = f"{error.instance!r}: a name is 1-64 letters, digits or ._-"
        return self.error(path, problem)


def _build(doc: _Document) -> Policy:
    """The policy of a schema-valid document, after its cross-reference checks."""
    tiers: dict[str, _Tier] = {}
    for name, spec in doc.data["tiers"].items():
        spec = spec or {}
        price = Price(float(spec.get("input_per_1k", 0)), float(spec.get("output_per_1k", 0)))
        tiers[name] = _Tier(price, spec.get("ttft_p95_budget_ms"), spec.get("next"))
    for name, tier in tiers.items():
        if tier.next is not None and tier.next not in tiers:
            raise doc.error(["tiers", name, "next"], f"{tier.next!r} is not a declared tier")
    for start in tiers:
        chain = [start]
        while (following := tiers[chain[-1]].next) is not None:
            if following in chain:
                cycle = " -> ".join([*chain[chain.index(following) :], following])
                raise doc.error(["tiers", chain[-1], "next"], f"{cycle} is a cycle")
            chain.append(following)
    default = _plan(doc, ["default"], doc.data["default"], None, tiers)
    tenants = {
        name: _plan(doc, ["tenants", name], spec or {}, default, tiers)
        for name, spec in (doc.data.get("tenants") or {}).items()
    }
    return Policy(tiers, default, tenants)


def _plan(
    doc: _Document,
    path: list[str | int],
    spec: Mapping[str, Any],
    base: _Plan | None,
    tiers: Mapping[str, _Tier],
) -> _Plan:
    """The plan at `path`, its omitted fields `base`'s (criticality per key), checked."""
    for index, name in enumerate(spec.get("tiers", ())):
        if name not in tiers:
            raise doc.error([*path, "tiers", index], f"{name!r} is not a declared tier")
    own = spec.get("criticality") or {}
    plan = _Plan(
        tiers=tuple(spec["tiers"]) if base is None or "tiers" in spec else base.tiers,
        criticality={
            kind: own[kind] if base is None or kind in own else base.criticality[kind]
            for kind in CRITICALITIES
        },
        over_soft_cap=(
            spec.get("over_soft_cap")
            if base is None or "over_soft_cap" in spec
            else base.over_soft_cap
        ),
        semantic_cache=(
            frozenset(spec.get("semantic_cache") or ())
            if base is None or "semantic_cache" in spec
            else base.semantic_cache
        ),
        guardrails=_guardrails(spec.get("guardrails") or {}, base),
    )
    _finite(doc, path, spec)
    tiers_field = _dotted([*path, "tiers"]) if "tiers" in spec else "default.tiers"
    uses: list[tuple[list[str | int], str, bool]] = [
        ([*path, "criticality", kind], plan.criticality[kind], kind not in own)
        for kind in CRITICALITIES
    ]
    if plan.over_soft_cap is not None:
        uses.append(([*path, "over_soft_cap"], plan.over_soft_cap, "over_soft_cap" not in spec))
    replace = plan.guardrails.replace_tier
    if replace is not None:
        own_guardrails = spec.get("guardrails") or {}
        uses.append(
            ([*path, "guardrails", "replace_tier"], replace, "replace_tier" not in own_guardrails)
        )
    elif plan.guardrails.ungrounded == "replace":
        raise doc.error(
            [*path, "guardrails", "ungrounded"], "'replace' needs guardrails.replace_tier"
        )
    for field, tier, from_base in uses:
        origin = " (from default)" if from_base else ""
        if tier not in tiers:
            raise doc.error(field, f"{tier!r}{origin} is not a declared tier")
        if tier not in plan.tiers:
            raise doc.error(
                field, f"{tier!r}{origin} is not in {tiers_field} [{', '.join(plan.tiers)}]"
            )
    return plan


def _guardrails(spec: Mapping[str, Any], base: _Plan | None) -> Guardrails:
    """The guardrails in `spec`, each omitted field `base`'s (the built-in default's for
    the default plan)."""
    inherited = base.guardrails if base is not None else Guardrails()
    known = {f.name for f in dataclasses.fields(Guardrails)}
    return dataclasses.replace(inherited, **{k: v for k, v in spec.items() if k in known})


def _finite(doc: _Document, path: list[str | int], spec: Mapping[str, Any]) -> None:
    """JSON Schema's bounds let YAML's .nan through (every comparison with it is false)."""
    floor = (spec.get("guardrails") or {}).get("groundedness_floor")
    if isinstance(floor, float) and not math.isfinite(floor):
        raise doc.error([*path, "guardrails", "groundedness_floor"], "must be a number 0..1")
