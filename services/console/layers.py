"""Per-layer figures from a window of scrapes: the topology view and the SLO table.

Sources: the edge is Envoy's view of the gateway cluster (milliseconds); gateway and
retrieval are their `ragmesh_request_duration_seconds` histograms; inference is Triton's
request counters and latency summary (microseconds).

During a release (`ragmesh release`) the edge also sends gRPC requests through the canary
clusters (services/edge/render.py): the edge's figures and a region's link count them
too, so the page's rates hold while traffic shifts. The canary gateways themselves are not
drawn: a region's card is its stable gateway, and a canary that is not running (no release)
turns nothing red.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from services.common.errors import CALLER_CODES
from services.config.console import SloConfig
from services.config.regions import Region
from services.console.observe import HOST_ERRORS, HOST_HEALTHY, HOST_RQ, Observer
from services.console.scrape import Scrape, quantile

REQUEST = "ragmesh_request_duration_seconds"
# Calls that ended well, or with a status the caller brought on itself: not failures.
NOT_FAILED = ("OK", *sorted(code.name for code in CALLER_CODES))
TTFT = "ragmesh_time_to_first_token_seconds"
CHUNK_GAP = "ragmesh_time_per_output_chunk_seconds"
CONTINUATIONS = "ragmesh_stream_continuations"
GAP = "ragmesh_stream_continuation_added_seconds"
EDGE_TIME = "envoy_cluster_upstream_rq_time"
# Envoy's clusters of the gateways' gRPC API: the stable one and the release rings'.
GATEWAY_CLUSTERS = ("gateway", "gateway-canary", "gateway-canary-all")
# The calls that answer questions: what latency budgets are about (ingest is bulk work).
READS = {"gateway": ("Generate", "GenerateStream", "Search"), "retrieval": ("Search",)}
BREAKER_STATES = {0.0: "closed", 1.0: "half_open", 2.0: "open"}
EMBEDDER = "embedder"

Window = dict[str, Scrape | None]


def _ms(q: float, buckets: list[tuple[float, float]], scale: float) -> float | None:
    value = quantile(q, buckets)
    return None if value is None else value * scale


def _sum_buckets(parts: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    counts: dict[float, float] = {}
    for part in parts:
        for bound, count in part:
            counts[bound] = counts.get(bound, 0.0) + count
    return sorted(counts.items())


def _rate(count: float, span: float) -> float:
    return count / span if span > 0 else 0.0


def _node(
    up: bool,
    rps: float,
    buckets: list[tuple[float, float]],
    scale: float,
    errors: float,
    calls: float,
) -> dict[str, Any]:
    return {
        "up": up,
        "rps": rps,
        "p95_ms": _ms(0.95, buckets, scale),
        "p99_ms": _ms(0.99, buckets, scale),
        "error_rate": errors / calls if calls else 0.0,
    }


def _edge(window: Window, span: float, up: bool) -> dict[str, Any]:
    """Requests the edge sent to gateways (health checks aside), those that failed there
    (5xx, resets, timeouts), and how long the gateways took as Envoy saw it."""
    hosts, stats = window.get("envoy-hosts"), window.get("envoy")
    calls = _gateways(hosts, HOST_RQ)
    errors = _gateways(hosts, HOST_ERRORS)
    buckets = _edge_buckets(stats) if stats else []
    return _node(up, _rate(calls, span), buckets, 1.0, errors, calls)


def _gateways(hosts: Scrape | None, name: str, **match: str) -> float:
    """Sum of Envoy's per-host `name` over the gateway clusters (GATEWAY_CLUSTERS)."""
    if hosts is None:
        return 0.0
    return sum(hosts.total(name, cluster=c, **match) for c in GATEWAY_CLUSTERS)


def _edge_buckets(stats: Scrape) -> list[tuple[float, float]]:
    """The edge's upstream time to the gateways, every gateway cluster's added."""
    return _sum_buckets([stats.buckets(EDGE_TIME, envoy_cluster_name=c) for c in GATEWAY_CLUSTERS])


def _service(d: Scrape | None, layer: str, span: float, up: bool) -> dict[str, Any]:
    if d is None:
        return _node(up, 0.0, [], 1000.0, 0.0, 0.0)
    calls = d.total(f"{REQUEST}_count", layer=layer)
    failed = calls - not_failed(d, layer=layer)
    return _node(up, _rate(calls, span), d.buckets(REQUEST, layer=layer), 1000.0, failed, calls)


def not_failed(d: Scrape, **match: str) -> float:
    """Calls matching `match` that ended OK or with a caller's own status (CALLER_CODES)."""
    return sum(d.total(f"{REQUEST}_count", **match, code=code) for code in NOT_FAILED)


def _gateway(d: Scrape | None, latest: Scrape | None, span: float) -> dict[str, Any]:
    node = _service(d, "gateway", span, latest is not None)
    hits = d.total("ragmesh_cache_lookups_total", kind="answer", result="hit") if d else 0.0
    misses = d.total("ragmesh_cache_lookups_total", kind="answer", result="miss") if d else 0.0
    node["cache_hit_ratio"] = hits / (hits + misses) if hits + misses else None
    # Streams continued on another endpoint after their model failed or stalled, and the
    # gap each left in its stream (services/gateway/generation.py).
    continued = d.total(f"{CONTINUATIONS}_total") if d else 0.0
    node["continuations_per_s"] = _rate(continued, span)
    node["continuation_gap_p95_ms"] = _ms(0.95, d.buckets(GAP) if d else [], 1000.0)
    breakers = []
    for (name, labels), value in sorted((latest.samples if latest else {}).items()):
        if name == "ragmesh_breaker_state":
            name = dict(labels)["endpoint"].replace("127.0.0.1:", ":")  # short on a card
            breakers.append({"name": name, "state": BREAKER_STATES[value]})
    node["breakers"] = breakers
    return node


def _triton_requests(d: Scrape | None, embedder: bool | None) -> tuple[float, float]:
    """(requests, failures) at Triton; embedder True/False picks its model or the others."""
    if d is None:
        return 0.0, 0.0
    totals = []
    for name in ("nv_inference_request_success_total", "nv_inference_request_failure_total"):
        every = d.total(name)
        embeds = d.total(name, model=EMBEDDER)
        totals.append(every if embedder is None else embeds if embedder else every - embeds)
    return totals[0] + totals[1], totals[1]


def _inference(d: Scrape | None, latest: Scrape | None, span: float) -> dict[str, Any]:
    calls, failures = _triton_requests(d, None)
    node = _node(latest is not None, _rate(calls, span), [], 1.0, failures, calls)
    if latest is not None:  # Triton's own summary: quantiles over its recent requests (us)
        for q in ("0.95", "0.99"):
            values = [
                v
                for (n, labels), v in latest.samples.items()
                if n == "nv_inference_request_summary_us"
                and ("quantile", q) in labels
                and v == v  # NaN: no requests lately
            ]
            node[f"p{q[2:]}_ms"] = max(values) / 1000.0 if values else None
    return node


def _region(
    region: Region,
    latest: dict[str, Scrape | None],
    window: Window,
    span: float,
    links: list[dict[str, Any]],
) -> dict[str, Any]:
    n = region.name
    gateway = _gateway(window.get(f"gateway-{n}"), latest.get(f"gateway-{n}"), span)
    retrieval = _service(
        window.get(f"retrieval-{n}"), "retrieval", span, latest.get(f"retrieval-{n}") is not None
    )
    triton = window.get(f"inference-{n}")
    inference = _inference(triton, latest.get(f"inference-{n}"), span)
    port = (("cluster", "gateway"), ("port", str(region.config.gateway.port)))
    hosts, recent = window.get("envoy-hosts"), latest.get("envoy-hosts")
    edge_healthy = recent is None or recent.samples.get((HOST_HEALTHY, port), 1.0) > 0
    sent = _gateways(hosts, HOST_RQ, port=str(region.config.gateway.port))
    searches = window.get(f"retrieval-{n}")
    links += [
        {"from": "edge", "to": f"gateway-{n}", "rps": _rate(sent, span)},
        {
            "from": f"gateway-{n}",
            "to": f"retrieval-{n}",
            "rps": _rate(
                searches.total(f"{REQUEST}_count", method="Search") if searches else 0, span
            ),
        },
        {
            "from": f"gateway-{n}",
            "to": f"inference-{n}",
            "rps": _rate(_triton_requests(triton, False)[0], span),
        },
        {
            "from": f"retrieval-{n}",
            "to": f"inference-{n}",
            "rps": _rate(_triton_requests(triton, True)[0], span),
        },
    ]
    return {
        "name": n,
        "priority": region.priority,
        "healthy": edge_healthy and gateway["up"] and retrieval["up"] and inference["up"],
        "gateway": gateway,
        "retrieval": retrieval,
        "inference": inference,
    }


def view(observer: Observer) -> dict[str, Any]:
    """The topology page's data: nodes with their overlays, links with their rates."""
    latest, window, span = observer.window()
    edge = _edge(window, span, latest.scrapes.get("envoy") is not None)
    links: list[dict[str, Any]] = [{"from": "client", "to": "edge", "rps": edge["rps"]}]
    regions = [_region(r, latest.scrapes, window, span, links) for r in observer.regions]
    answered = sum(s is not None for s in latest.scrapes.values())
    endpoint = observer.config.telemetry.otlp_endpoint
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "window_s": round(span, 1),
        "edge": edge,
        "regions": regions,
        "links": links,
        "telemetry": {
            "up": answered == len(latest.scrapes),
            "detail": [
                f"otlp → {endpoint}" if endpoint else "otlp: not exported",
                f"prometheus: {answered}/{len(latest.scrapes)} endpoints",
            ],
        },
    }


@dataclass(frozen=True)
class SloRow:
    """One stage's figures over a window, against its p99 budget; also a row of a load
    run's CSV (services/console/gate.py)."""

    stage: str
    requests: int
    p95_ms: float | None
    p99_ms: float | None
    budget_ms: float | None  # None: a stage without a budget (shown for the picture)
    note: str = ""
    p50_ms: float | None = None
    errors: int = 0
    rps: float = 0.0
    statuses: str = ""  # "OK:980 UNAVAILABLE:20", where the layer says

    @property
    def ok(self) -> bool:
        return self.p99_ms is None or self.budget_ms is None or self.p99_ms <= self.budget_ms


def slo(observer: Observer, budgets: SloConfig) -> list[SloRow]:
    """p50/p95/p99 per stage against its p99 budget, every region together."""
    _, window, span = observer.window()
    scrapes = [s for s in window.values() if s is not None]
    Figures = tuple[int, float | None, float | None, float | None]

    def figures(parts: list[list[tuple[float, float]]], scale: float) -> Figures:
        """Requests, p50, p95 and p99 (ms) of histograms added together."""
        buckets = _sum_buckets(parts)
        count = int(buckets[-1][1]) if buckets else 0
        return count, _ms(0.5, buckets, scale), _ms(0.95, buckets, scale), _ms(0.99, buckets, scale)

    def reads(layer: str) -> tuple[Figures, int]:
        parts = [s.buckets(REQUEST, layer=layer, method=m) for s in scrapes for m in READS[layer]]
        ok = sum(not_failed(s, layer=layer, method=m) for s in scrapes for m in READS[layer])
        found = figures(parts, 1000.0)
        return found, found[0] - int(ok)

    hosts = window.get("envoy-hosts")
    total = figures([_edge_buckets(s) for s in scrapes], 1.0)
    total_errors = int(_gateways(hosts, HOST_ERRORS))
    gateway, gateway_errors = reads("gateway")
    retrieval, retrieval_errors = reads("retrieval")
    added = [
        max(t - g, 0.0) if t is not None and g is not None else None
        for t, g in zip(total[1:], gateway[1:], strict=True)
    ]
    rows: dict[str, tuple[Figures, int, str]] = {
        "total": (total, total_errors, "at the edge"),
        "edge": ((total[0], added[0], added[1], added[2]), 0, "edge minus gateway, an estimate"),
        "gateway": (gateway, gateway_errors, "Generate, GenerateStream, Search"),
        "retrieval": (retrieval, retrieval_errors, "Search"),
        "time_to_first_token": (
            figures([s.buckets(TTFT) for s in scrapes], 1000.0),
            0,
            "at the gateway",
        ),
        "time_per_output_chunk": (
            figures([s.buckets(CHUNK_GAP) for s in scrapes], 1000.0),
            0,
            "gaps between streamed pieces (counted as requests), at the gateway",
        ),
    }
    return [
        SloRow(
            stage,
            count,
            p95,
            p99,
            budgets.budget_ms(stage),
            note,
            p50_ms=p50,
            errors=errors,
            rps=_rate(count, span),
        )
        for stage, ((count, p50, p95, p99), errors, note) in rows.items()
    ]
