"""The gateway's own Prometheus metrics, beside services/common/metrics.py's, all served on
`gateway.host`:`gateway.metrics_port`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import BUCKETS

BREAKER_STATE = Gauge(
    "ragmesh_breaker_state",
    "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open",
    ["endpoint"],
    multiprocess_mode="livemax",  # with workers (services/gateway/workers.py): the worst
)
BREAKER_TRANSITIONS = Counter(
    "ragmesh_breaker_transitions_total", "Breaker state changes", ["endpoint", "state"]
)
DEGRADED = Counter(
    "ragmesh_degraded_responses_total", "Responses marked degraded, by cause", ["cause"]
)
CACHE = Counter(
    "ragmesh_cache_lookups_total", "Cache lookups by kind and result", ["kind", "result"]
)
SEMANTIC_SIMILARITY = Histogram(
    "ragmesh_semantic_cache_hit_similarity",
    "Cosine similarity of a semantic cache hit's question to the cached one",
    buckets=(0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0),
)
GUARDRAILS = Counter(
    "ragmesh_guardrail_decisions_total",
    "Guardrail decisions by check (prompt_injection, document_injection, pii, citations, "
    "groundedness, json_schema), verdict and action",
    ["check", "verdict", "action"],
)
GROUNDEDNESS = Histogram(
    "ragmesh_answer_groundedness",
    "Share of an answer's claiming sentences that its sources support (0..1)",
    buckets=(0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)

TIME_TO_FIRST_TOKEN = Histogram(
    "ragmesh_time_to_first_token_seconds",
    "From the request's arrival to its first answer text, by tier that answered",
    ["tier"],
    buckets=BUCKETS,
)
TIME_PER_OUTPUT_CHUNK = Histogram(
    "ragmesh_time_per_output_chunk_seconds",
    "From one piece of a streamed answer's text to the next, by tier that answered "
    "(OpenTelemetry gen_ai.client.operation.time_per_output_chunk, at the gateway)",
    ["tier"],
    buckets=BUCKETS,
)
TOKENS = Counter(
    "ragmesh_tokens_total", "Tokens by tier and direction (input, output)", ["tier", "direction"]
)
COST = Counter(
    "ragmesh_cost_usd_total", "Cost in US dollars by tier (the policy's prices)", ["tier"]
)
# With control.tenant_metrics only: one series per tenant and tier.
TENANT_TOKENS = Counter(
    "ragmesh_tenant_tokens_total",
    "Tokens (input and output) by tenant and tier",
    ["tenant", "tier"],
)
TENANT_COST = Counter(
    "ragmesh_tenant_cost_usd_total", "Cost in US dollars by tenant and tier", ["tenant", "tier"]
)
ROUTING = Counter(
    "ragmesh_routing_decisions_total",
    "The routing policy's choices: tier and reason (requested, criticality, latency_guardrail, "
    "breaker_open, soft_cap)",
    ["tier", "reason"],
)
ADMISSIONS = Counter(
    "ragmesh_admissions_total", "Admission decisions: admitted, refused", ["result"]
)
RETRIEVAL_TOP_SCORE = Histogram(
    "ragmesh_retrieval_top_score",
    "Cosine score of the best retrieved chunk per request",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
CONTINUATIONS = Counter(
    "ragmesh_stream_continuations_total",
    "Streams continued on another endpoint after their model failed or stalled mid-answer, "
    "by tier and why (failed, stalled)",
    ["tier", "reason"],
)
CONTINUATION_SECONDS = Histogram(
    "ragmesh_stream_continuation_added_seconds",
    "The gap a continuation left in its stream: from the last token before the failure to "
    "the first after it",
    buckets=BUCKETS,
)
