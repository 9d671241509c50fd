"""The release gate: what canary gateways served over one ring's bake, from two scrapes of
their own metrics, judged against the SLO budgets (`ragmesh release`,
services/supervisor/release.py).

It counts what the SLO rules count (deploy/prometheus/slo-rules.yml): every gateway call is
a request, and a server failure is one that ended neither OK nor with a status the caller
brought on itself (services.common.errors.CALLER_CODES); the p99 is of the calls that
answer questions (Generate, GenerateStream, Search), as `ragmesh slo`'s gateway row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.config.console import SloConfig
from services.console.layers import READS, REQUEST, not_failed
from services.console.scrape import Scrape, quantile

PASS = "pass"
BREACH = "BREACH"
NO_TRAFFIC = "NOT ENOUGH TRAFFIC"
STOPPED = "STOPPED"


@dataclass(frozen=True)
class Figures:
    """What canaries served over a ring: requests, server failures, p99 of reads (ms)."""

    requests: int
    errors: int
    p99_ms: float | None

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def figures(diffs: list[Scrape]) -> Figures:
    """The figures of `diffs`, each one canary's counters over the ring (Scrape.since),
    added together."""
    requests = sum(d.total(f"{REQUEST}_count", layer="gateway") for d in diffs)
    served = sum(not_failed(d, layer="gateway") for d in diffs)
    counts: dict[float, float] = {}
    for d in diffs:
        for method in READS["gateway"]:
            for bound, count in d.buckets(REQUEST, layer="gateway", method=method):
                counts[bound] = counts.get(bound, 0.0) + count
    buckets = sorted(counts.items())
    p99 = quantile(0.99, buckets)
    if p99 is not None and _beyond_every_bound(0.99, buckets):
        p99 = math.inf  # not the highest bound, as histogram_quantile says: it must breach
    return Figures(round(requests), round(requests - served), None if p99 is None else p99 * 1000)


def _beyond_every_bound(q: float, buckets: list[tuple[float, float]]) -> bool:
    """Whether rank q of cumulative `buckets` falls in the +Inf bucket: the quantile is then
    above the highest bound (30 s for the gateway, slo.gateway_ms's default), however far."""
    finite = [count for bound, count in buckets if not math.isinf(bound)]
    return bool(finite) and finite[-1] < q * buckets[-1][1]


@dataclass(frozen=True)
class Verdict:
    """One ring's line of the release table."""

    ring: str
    figures: Figures
    verdict: str  # PASS, BREACH, NO_TRAFFIC or STOPPED
    reason: str

    @property
    def passed(self) -> bool:
        return self.verdict == PASS


def judge(ring: str, found: Figures, slo: SloConfig, min_requests: int) -> Verdict:
    """PASS when the canaries served at least `min_requests` within slo.error_rate and
    slo.gateway_ms (p99); else why not, in words."""
    if found.requests < min_requests:
        why = f"{found.requests} requests served, under release.min_requests ({min_requests})"
        return Verdict(ring, found, NO_TRAFFIC, why)
    breaches = []
    if found.error_ratio > slo.error_rate:
        breaches.append(
            f"error ratio {found.error_ratio:.2%} over slo.error_rate {slo.error_rate:.2%}"
        )
    if found.p99_ms is not None and found.p99_ms > slo.gateway_ms:
        breaches.append(f"p99 {found.p99_ms:.1f} ms over slo.gateway_ms {slo.gateway_ms:g} ms")
    if breaches:
        return Verdict(ring, found, BREACH, "; ".join(breaches))
    return Verdict(ring, found, PASS, "within slo.error_rate and slo.gateway_ms")


def table(verdicts: list[Verdict]) -> str:
    """The release's rings, one line each."""
    lines = [
        f"  {'ring':24} {'requests':>8} {'errors':>6} {'ratio':>7} {'p99 ms':>9}  "
        f"{'verdict':18} reason"
    ]
    for v in verdicts:
        f = v.figures
        p99 = f"{f.p99_ms:9.1f}" if f.p99_ms is not None else f"{'-':>9}"
        lines.append(
            f"  {v.ring:24} {f.requests:8d} {f.errors:6d} {f.error_ratio:7.2%} {p99}  "
            f"{v.verdict:18} {v.reason}".rstrip()
        )
    return "\n".join(lines)
