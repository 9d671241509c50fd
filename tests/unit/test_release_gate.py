"""The release gate's arithmetic (services/console/canary.py): a canary's counters over a
ring, its server failures as the SLO rules count them, its p99 from histogram buckets, and
the verdict against the SLO budgets."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from services.common.errors import CALLER_CODES
from services.common.metrics import BUCKETS
from services.config.console import SloConfig
from services.console.canary import (
    BREACH,
    NO_TRAFFIC,
    PASS,
    Figures,
    figures,
    judge,
    table,
)
from services.console.scrape import Scrape


class Canary:
    """A canary gateway's metrics, as its own registry serves them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.seconds = Histogram(
            "ragmesh_request_duration_seconds",
            "calls",
            ["layer", "method", "code"],
            buckets=BUCKETS,
            registry=self.registry,
        )

    def calls(self, count: int, seconds: float, code: str = "OK", method: str = "Search") -> None:
        for _ in range(count):
            self.seconds.labels("gateway", method, code).observe(seconds)

    def scrape(self) -> Scrape:
        return Scrape.parse(generate_latest(self.registry).decode())


def test_only_what_happened_in_the_ring_counts() -> None:
    canary = Canary()
    canary.calls(50, 0.003, "UNAVAILABLE")  # before the ring: not its figures
    before = canary.scrape()
    canary.calls(99, 0.003)
    canary.calls(1, 0.003, "INTERNAL")
    found = figures([canary.scrape().since(before)])
    assert found == Figures(100, 1, found.p99_ms)
    assert found.error_ratio == pytest.approx(0.01)


def test_a_callers_own_status_is_no_server_failure() -> None:
    canary = Canary()
    for code in CALLER_CODES:
        canary.calls(3, 0.003, code.name)
    canary.calls(2, 0.003, "DEADLINE_EXCEEDED")  # the server's: its budget ran out
    canary.calls(1, 0.003, "ABORTED")  # an answer that broke its schema: the server's
    found = figures([canary.scrape()])
    assert found.requests == 3 * len(CALLER_CODES) + 3
    assert found.errors == 3


def test_p99_is_interpolated_in_its_bucket_over_the_reads_only() -> None:
    canary = Canary()
    canary.calls(98, 0.003)  # (0, 5 ms]
    canary.calls(2, 0.2)  # (100, 250 ms]: rank 99 of 100 is the first of these two
    canary.calls(50, 20.0, method="IngestDocuments")  # bulk work, not a read
    found = figures([canary.scrape()])
    assert found.requests == 150
    # Prometheus's histogram_quantile: 100 + (250 - 100) * (99 - 98) / (100 - 98) ms.
    assert found.p99_ms == pytest.approx(175.0)


def test_every_canary_of_a_ring_adds_up() -> None:
    local, remote = Canary(), Canary()
    local.calls(30, 0.003)
    remote.calls(10, 0.003, "UNAVAILABLE")
    found = figures([local.scrape(), remote.scrape()])
    assert (found.requests, found.errors) == (40, 10)
    assert figures([]) == Figures(0, 0, None)


SLO = SloConfig(error_rate=0.01, gateway_ms=1000.0)


def test_a_ring_within_its_budgets_passes() -> None:
    verdict = judge("0", Figures(100, 1, 999.0), SLO, min_requests=20)
    assert verdict.passed and verdict.verdict == PASS


@pytest.mark.parametrize(
    ("found", "reason"),
    [
        (Figures(100, 2, 10.0), "error ratio 2.00% over slo.error_rate 1.00%"),
        (Figures(100, 0, 1000.5), "p99 1000.5 ms over slo.gateway_ms 1000 ms"),
    ],
)
def test_a_breach_of_either_budget_fails_the_ring(found: Figures, reason: str) -> None:
    verdict = judge("1", found, SLO, min_requests=20)
    assert not verdict.passed
    assert (verdict.verdict, verdict.reason) == (BREACH, reason)


def test_too_little_traffic_is_not_judged() -> None:
    verdict = judge("0", Figures(19, 19, 5000.0), SLO, min_requests=20)
    assert verdict.verdict == NO_TRAFFIC and not verdict.passed
    assert "19 requests served, under release.min_requests (20)" in verdict.reason


def test_the_table_has_a_line_a_ring() -> None:
    lines = table(
        [
            judge("0: 5% of local", Figures(40, 0, 9.8), SLO, 20),
            judge("1: all of local", Figures(40, 40, None), SLO, 20),
        ]
    ).splitlines()
    assert lines[0].split()[:6] == ["ring", "requests", "errors", "ratio", "p99", "ms"]
    assert lines[1].split()[4:8] == ["40", "0", "0.00%", "9.8"]
    assert "BREACH" in lines[2] and "100.00%" in lines[2] and " - " in lines[2]


def test_a_p99_beyond_the_highest_bucket_breaches_the_default_budget() -> None:
    """histogram_quantile would say 30 s, the highest bound, which is slo.gateway_ms's default:
    a canary slower than every bucket must still fail its ring (the newcomer's finding)."""
    canary = Canary()
    canary.calls(97, 0.003)
    canary.calls(3, 45.0)  # past the 30 s bound: the +Inf bucket holds rank 99
    found = figures([canary.scrape()])
    assert found.p99_ms == float("inf")
    verdict = judge("0", found, SloConfig(), min_requests=10)
    assert verdict.verdict == BREACH and "over slo.gateway_ms 30000 ms" in verdict.reason
    canary.calls(300, 0.003)  # now rank 99 is within the buckets again
    assert figures([canary.scrape()]).p99_ms < 30_000
