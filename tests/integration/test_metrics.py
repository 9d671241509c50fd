"""Every layer's metrics move with the traffic: the gateway's and retrieval's (Prometheus),
Envoy's (/stats/prometheus) and Triton's."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ragmesh.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.integration


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_request_moves_every_layers_metrics(mesh, stub, demo_key, corpus):
    region = mesh.regions[0].config
    gateway = f"http://127.0.0.1:{region.gateway.metrics_port}/metrics"
    retrieval = f"http://127.0.0.1:{region.retrieval.metrics_port}/metrics"
    envoy = f"{mesh.admin_url}/stats/prometheus"
    triton = f"http://127.0.0.1:{region.triton.metrics_port}/metrics"
    before = {url: _scrape(url) for url in (gateway, retrieval, envoy, triton)}
    metadata = (("x-api-key", demo_key),)
    request = pb.GenerateRequest(query="How hot for green tea?", tier="economy", bypass_cache=True)
    stub.Generate(request, metadata=metadata, timeout=60)
    with pytest.raises(grpc.RpcError):
        stub.Generate(pb.GenerateRequest(query=" "), metadata=metadata, timeout=60)
    after = {url: _scrape(url) for url in (gateway, retrieval, envoy, triton)}

    def moved(url: str, name: str, **labels: str) -> float:
        return _value(after[url], name, **labels) - _value(before[url], name, **labels)

    seconds = "ragmesh_request_duration_seconds_count"
    assert moved(gateway, seconds, layer="gateway", method="Generate", code="OK") == 1
    assert moved(gateway, seconds, layer="gateway", method="Generate", code="INVALID_ARGUMENT") == 1
    assert moved(retrieval, seconds, layer="retrieval", method="Search", code="OK") == 1
    # The p99 bucket boundary holds the request: the histogram has its buckets.
    assert (
        moved(
            gateway,
            "ragmesh_request_duration_seconds_bucket",
            layer="gateway",
            method="Generate",
            code="OK",
            le="30.0",
        )
        == 1
    )
    assert moved(gateway, "ragmesh_time_to_first_token_seconds_count", tier="economy") == 1
    assert moved(gateway, "ragmesh_tokens_total", tier="economy", direction="output") > 0
    assert moved(gateway, "ragmesh_retrieval_top_score_count") == 1
    assert moved(gateway, "ragmesh_cache_lookups_total", kind="answer", result="bypass") == 1
    assert (
        _value(
            after[gateway],
            "ragmesh_breaker_state",
            endpoint=f"retrieval {region.gateway.retrieval_target}",
        )
        == 0
    )
    completed = "envoy_cluster_upstream_rq_completed_total"
    assert moved(envoy, completed, envoy_cluster_name="gateway") >= 2
    assert moved(triton, "nv_inference_request_success_total", model="economy", version="1") == 1
