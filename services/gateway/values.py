"""The gateway's domain values: a request (Call, GenerateParams), what it gets back (Answer,
Citation), and the mesh's state as a tenant sees it (Status, Dependency)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common import telemetry
from services.common.errors import DeadlineExceeded
from services.contract.prompt import Turn
from services.control.policy import Route
from services.control.registry import ApiKey

HIT, MISS, BYPASS = "hit", "miss", "bypass"


@dataclass(frozen=True)
class Call:
    """One request: who asks, until when, and the trace it belongs to."""

    tenant: str
    deadline: float  # time.monotonic() by which the answer must be out
    trace_id: str
    key: ApiKey | None = None  # None: a call admitted without the control plane (tests)

    @classmethod
    def start(cls, tenant: str, budget_s: float, key: ApiKey | None = None) -> Call:
        """In the request's span: its trace id names the request (a random one without)."""
        trace_id = telemetry.trace_id() or secrets.token_hex(16)
        deadline = time.monotonic() + budget_s
        return cls(tenant=tenant, deadline=deadline, trace_id=trace_id, key=key)

    def remaining(self) -> float:
        """Seconds left; raises DeadlineExceeded when none are."""
        left = self.remaining_s()
        if left <= 0:
            raise DeadlineExceeded("the request's deadline passed")
        return left

    def remaining_s(self) -> float:
        """Seconds left, negative once the deadline passed."""
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class GenerateParams:
    query: str
    top_k: int = 0
    max_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    user: str = ""  # the end user's id (OpenAI's `user`), for an upstream tier
    # The conversation before `query`, oldest first; the prompt keeps the newest that fit.
    history: tuple[Turn, ...] = ()
    filters: dict[str, str] = field(default_factory=dict)
    tier: str = ""
    model_version: str = ""
    bypass_cache: bool = False
    skip_retrieval: bool = False
    priority: str = ""  # critical, standard (""), batch: the routing policy's criticality
    # A JSON Schema (2020-12) the answer must be one JSON value of; None: free text.
    json_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Citation:
    index: int  # the source's number in the prompt, as the answer cites it: [n]
    document_id: str
    chunk_id: str
    score: float
    snippet: str
    page: int = 0  # the PDF page the chunk is on; 0: none
    heading: str = ""  # the path of the headings above it; "": none


@dataclass(frozen=True)
class CacheMatch:
    """What a cached answer matched: "exact" or "semantic" (cosine `similarity` of the two
    questions), and the trace id of the request that answered."""

    kind: str
    similarity: float
    trace_id: str


@dataclass(frozen=True)
class Guardrail:
    """One guardrail's decision on a request: `check` (prompt_injection, document_injection,
    pii, citations, groundedness, json_schema), its `verdict` (pass, detected, redacted,
    removed, ungrounded, invalid), the `action` taken (none, flag, block, drop, fence,
    redact, remove, replace) and a `detail` sentence (rule names and counts, never text).
    `score`: groundedness' share of supported sentences, else None."""

    check: str
    verdict: str
    action: str
    detail: str = ""
    score: float | None = None


@dataclass(frozen=True)
class Continuation:
    """A stream continued on another endpoint after its model failed or stalled: the one
    that failed and the one that went on (Triton targets), why, after how many of the
    answer's completion tokens, the gap it left in the stream (seconds from the last token
    before the failure to the first after it, a stall's budget included) and the tier whose
    model went on."""

    failed_endpoint: str
    endpoint: str
    reason: str
    after_tokens: int
    added_seconds: float
    tier: str


@dataclass(frozen=True)
class Answer:
    text: str
    citations: list[Citation]
    prompt_tokens: int
    completion_tokens: int
    model: str  # "<model>/<version>"
    tier: str  # the tier that answered
    corpus_version: str
    finish_reason: str  # the model's: "stop", "length"; "" where it reports none
    cache_status: str = BYPASS
    degraded_reason: str = ""  # empty: not degraded
    fallback_from: str = ""  # the tier asked for, when it was down and `tier` answered
    routing: Route | None = None  # the policy's choice and why; None without a policy
    cost_usd: float = 0.0  # priced by the policy; 0 for a cached answer
    cache_match: CacheMatch | None = None  # set on a cache hit
    guardrails: tuple[Guardrail, ...] = ()  # every guardrail's decision, in order
    continuations: tuple[Continuation, ...] = ()  # where the stream went on, in order

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reason)


@dataclass(frozen=True)
class Dependency:
    name: str
    target: str
    healthy: bool
    detail: str
    breaker: str = ""


@dataclass(frozen=True)
class Status:
    corpus_version: str
    corpus_region: str
    corpus_lag: int  # -1: unknown
    dependencies: list[Dependency]
