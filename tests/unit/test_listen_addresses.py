"""Servers listen where their config says: a metrics endpoint on its plane's host, the
console on console.host; and the console scrapes each plane at that plane's host."""

from __future__ import annotations

import dataclasses
import socket
from types import SimpleNamespace

import pytest

from services.common import metrics
from services.config.console import ConsoleConfig
from services.config.mesh import MeshConfig
from services.config.regions import regions
from services.console.observe import targets, url
from services.console.server import build_server


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_a_metrics_endpoint_binds_the_host_it_is_given(host: str) -> None:
    server = metrics.serve(_free_port(host), host)
    assert server is not None
    try:
        assert server.socket.getsockname()[0] == host
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_port_zero_serves_nothing() -> None:
    assert metrics.serve(0, "0.0.0.0") is None


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_the_console_binds_the_host_it_is_given(host: str) -> None:
    console = SimpleNamespace(poll=lambda: None, view=dict, config=ConsoleConfig())
    server, port = build_server(console, host, 0)  # type: ignore[arg-type]
    try:
        assert server.socket.getsockname() == (host, port)
    finally:
        server.server_close()


def test_the_console_scrapes_each_plane_at_its_host() -> None:
    local = targets(MeshConfig())
    assert local == {
        "envoy": "http://127.0.0.1:9901/stats/prometheus",
        "gateway-local": "http://127.0.0.1:9464/metrics",
        "retrieval-local": "http://127.0.0.1:9465/metrics",
        "inference-local": "http://127.0.0.1:8002/metrics",
        "gateway-remote": "http://127.0.0.1:9564/metrics",
        "retrieval-remote": "http://127.0.0.1:9565/metrics",
        "inference-remote": "http://127.0.0.1:8102/metrics",
    }
    config = MeshConfig()
    deployed = dataclasses.replace(
        config,
        mesh=dataclasses.replace(config.mesh, regions=["local"]),
        gateway=dataclasses.replace(config.gateway, host="gateway"),
        retrieval=dataclasses.replace(config.retrieval, host="fd00::5"),
        triton=dataclasses.replace(config.triton, host="triton.ragmesh-local.svc"),
    )
    assert targets(deployed) == {
        "envoy": "http://127.0.0.1:9901/stats/prometheus",  # Envoy's admin: loopback only
        "gateway-local": "http://gateway:9464/metrics",
        "retrieval-local": "http://[fd00::5]:9465/metrics",
        "inference-local": "http://triton.ragmesh-local.svc:8002/metrics",
    }
    assert url("::1", 80, "/x") == "http://[::1]:80/x"


def test_every_region_reaches_triton_at_triton_host() -> None:
    config = MeshConfig()
    config = dataclasses.replace(config, triton=dataclasses.replace(config.triton, host="gpu"))
    local, remote = regions(config)
    assert local.config.gateway.triton_target == local.config.retrieval.triton_target
    assert local.config.gateway.triton_target == local.triton_target == "gpu:8001"
    assert remote.triton_target == "gpu:8101"
    assert local.config.gateway.triton_fallback_targets == ["gpu:8101"]
