"""The console's arithmetic: Prometheus text in, rates, percentiles and SLO verdicts out."""

from __future__ import annotations

import math

import pytest

from services.config.console import SloConfig
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.console import layers
from services.console.observe import (
    HOST_ERRORS,
    HOST_HEALTHY,
    HOST_RQ,
    Observer,
    Snapshot,
    hosts_scrape,
)
from services.console.scrape import Scrape, quantile

GATEWAY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, math.inf)
EDGE_BOUNDS = (5.0, 10.0, 25.0, 50.0, 100.0, math.inf)


def histogram(name: str, labels: str, bounds: tuple[float, ...], counts: list[int]) -> str:
    """Prometheus text of a cumulative histogram; counts per bucket, not cumulative."""
    lines, total = [f"# TYPE {name} histogram"], 0
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        le = "+Inf" if math.isinf(bound) else repr(bound)
        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {total}')
    lines += [f"{name}_count{{{labels}}} {total}", f"{name}_sum{{{labels}}} 0"]
    return "\n".join(lines) + "\n"


def gateway_text(
    ok: list[int], failed: int, breaker: float, refused: int = 0, continued: int = 0
) -> str:
    """Generate calls (`failed` UNAVAILABLE, `refused` INVALID_ARGUMENT: the caller's), the
    retrieval breaker's state, one cache hit for three misses a request that succeeded, and
    `continued` streams, each of which left a gap of 0.5 to 1 s."""
    name = "ragmesh_request_duration_seconds"
    text = histogram(name, 'layer="gateway",method="Generate",code="OK"', GATEWAY_BOUNDS, ok)
    for code, count in (("UNAVAILABLE", failed), ("INVALID_ARGUMENT", refused)):
        text += histogram(
            name,
            f'layer="gateway",method="Generate",code="{code}"',
            GATEWAY_BOUNDS,
            [0, 0, 0, 0, count, 0],
        ).replace("# TYPE ragmesh_request_duration_seconds histogram\n", "")
    text += "# TYPE ragmesh_breaker_state gauge\n"
    text += f'ragmesh_breaker_state{{endpoint="retrieval 127.0.0.1:8081"}} {breaker}\n'
    text += "# TYPE ragmesh_cache_lookups_total counter\n"
    text += f'ragmesh_cache_lookups_total{{kind="answer",result="hit"}} {sum(ok)}\n'
    text += f'ragmesh_cache_lookups_total{{kind="answer",result="miss"}} {3 * sum(ok)}\n'
    text += "# TYPE ragmesh_stream_continuations_total counter\n"
    text += f'ragmesh_stream_continuations_total{{tier="standard",reason="failed"}} {continued}\n'
    gap = "ragmesh_stream_continuation_added_seconds"
    text += f"# TYPE {gap} histogram\n"
    for le, count in (("0.5", 0), ("1.0", continued), ("+Inf", continued)):
        text += f'{gap}_bucket{{le="{le}"}} {count}\n'
    text += f"{gap}_count {continued}\n{gap}_sum {0.75 * continued}\n"
    return text


def edge_text(counts: list[int]) -> str:
    text = histogram(
        "envoy_cluster_upstream_rq_time", 'envoy_cluster_name="gateway"', EDGE_BOUNDS, counts
    )
    text += "# TYPE envoy_cluster_upstream_rq_total counter\n"
    text += f'envoy_cluster_upstream_rq_total{{envoy_cluster_name="gateway"}} {sum(counts)}\n'
    return text


def test_quantile_interpolates_within_the_bucket_like_prometheus() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (0.2, 1.0), (math.inf, 10.0)]) == 0.2
    assert quantile(0.5, []) is None


def test_a_scrape_sums_matching_series_and_differences_counters() -> None:
    before = Scrape.parse(gateway_text([1, 0, 0, 0, 0, 0], 0, 0))
    after = Scrape.parse(gateway_text([1, 4, 0, 0, 0, 0], 2, 2))
    change = after.since(before)
    count = "ragmesh_request_duration_seconds_count"
    assert change.total(count, layer="gateway") == 6
    assert change.total(count, layer="gateway", code="OK") == 4
    assert change.buckets("ragmesh_request_duration_seconds", code="OK")[1] == (0.01, 4.0)
    # A process that restarted starts its counters again: they count from zero.
    restarted = Scrape.parse(gateway_text([2, 0, 0, 0, 0, 0], 0, 0)).since(after)
    assert restarted.total(count, layer="gateway") == 2


def observer_with(first_texts: dict[str, str], second_texts: dict[str, str]) -> Observer:
    observer = Observer(first(MeshConfig(), 1), window_s=30.0)
    for at, texts in ((100.0, first_texts), (110.0, second_texts)):
        scrapes: dict[str, Scrape | None] = {
            name: Scrape.parse(text) for name, text in texts.items()
        }
        scrapes.setdefault("retrieval-local", None)
        port = (("cluster", "gateway"), ("port", "50051"))
        count = 0.0 if at == 100.0 else 50.0
        scrapes["envoy-hosts"] = Scrape({(HOST_RQ, port): count, (HOST_HEALTHY, port): 1.0})
        observer.record(Snapshot(at, scrapes))
    return observer


def test_the_view_reports_rates_errors_breakers_and_links_over_the_window() -> None:
    observer = observer_with(
        {"envoy": edge_text([0] * 6), "gateway-local": gateway_text([0] * 6, 0, 0)},
        {
            "envoy": edge_text([0, 40, 10, 0, 0, 0]),
            "gateway-local": gateway_text([0, 38, 0, 0, 0, 0], 2, 2, refused=10, continued=3),
        },
    )
    view = layers.view(observer)
    assert view["window_s"] == 10.0
    assert view["edge"]["rps"] == 5.0
    gateway = view["regions"][0]["gateway"]
    assert gateway["rps"] == 5.0
    # The 10 INVALID_ARGUMENT are the callers' own mistakes, not the gateway's failures.
    assert gateway["error_rate"] == pytest.approx(2 / 50)
    assert gateway["breakers"] == [{"name": "retrieval :8081", "state": "open"}]
    assert gateway["cache_hit_ratio"] == 0.25
    assert gateway["continuations_per_s"] == pytest.approx(0.3)  # 3 in the 10 s window
    assert 500 < gateway["continuation_gap_p95_ms"] <= 1000
    retrieval = view["regions"][0]["retrieval"]
    assert retrieval["up"] is False and view["regions"][0]["healthy"] is False
    assert {"from": "edge", "to": "gateway-local", "rps": 5.0} in view["links"]


def test_slo_rows_compare_p99_with_each_budget() -> None:
    observer = observer_with(
        {"envoy": edge_text([0] * 6), "gateway-local": gateway_text([0] * 6, 0, 0)},
        {
            # 100 requests at the edge: 99 under 10 ms, one under 100 ms.
            "envoy": edge_text([0, 99, 0, 0, 1, 0]),
            "gateway-local": gateway_text([0, 100, 0, 0, 0, 0], 0, 0),
        },
    )
    rows = {row.stage: row for row in layers.slo(observer, SloConfig(gateway_ms=9.0))}
    assert rows["total"].requests == 100
    assert rows["total"].p99_ms == pytest.approx(10.0)
    assert rows["gateway"].p99_ms == pytest.approx(9.95)
    assert not rows["gateway"].ok  # 9.95 ms against a 9 ms budget
    assert rows["edge"].p99_ms == pytest.approx(0.05)
    assert rows["edge"].ok
    assert rows["retrieval"].p99_ms is None and rows["retrieval"].ok  # no data, no verdict


def _host(address: dict, rq: int, errors: int, failed: bool = False) -> dict:
    return {
        "address": address,
        "stats": [{"name": "rq_total", "value": str(rq)}, {"name": "rq_error", "value": errors}],
        "health_status": {"failed_active_health_check": True} if failed else {},
    }


def test_a_gateways_workers_count_as_one_host_up_while_one_is() -> None:
    """Envoy sees each worker of a gateway as a host on its own socket (a pipe); the console
    adds them up under the port of the API they serve (services/gateway/workers.py)."""
    pipe = "/srv/data/run/gateway-50051-{}.sock"
    clusters = [
        {
            "name": "gateway",
            "host_statuses": [
                _host({"pipe": {"path": pipe.format(0)}}, 30, 1, failed=True),
                _host({"pipe": {"path": pipe.format(1)}}, 12, 2),
                _host({"socket_address": {"address": "127.0.0.1", "port_value": 50151}}, 5, 0),
            ],
        }
    ]
    scrape = hosts_scrape(clusters)
    workers = (("cluster", "gateway"), ("port", "50051"))
    other = (("cluster", "gateway"), ("port", "50151"))
    assert scrape.samples[(HOST_RQ, workers)] == 42
    assert scrape.samples[(HOST_ERRORS, workers)] == 3
    assert scrape.samples[(HOST_HEALTHY, workers)] == 1.0
    assert scrape.samples[(HOST_RQ, other)] == 5
    clusters[0]["host_statuses"][1]["health_status"] = {"failed_outlier_check": True}
    assert hosts_scrape(clusters).samples[(HOST_HEALTHY, workers)] == 0.0
