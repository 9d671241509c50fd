"""`ragmesh release`'s canary gateways (services/supervisor/release.py): where each region's
canary serves, what of the canary config it keeps, and the rings' runtime keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services.config.mesh import MeshConfig
from services.supervisor.launcher import ROOT
from services.supervisor.release import Release, canary_configs, rings

STABLE = MeshConfig.load(ROOT / "config" / "mesh.yaml")


def test_each_regions_canary_serves_on_its_stable_ports_plus_the_offset() -> None:
    # The second build: another gateway section, on other ports and regions of its own,
    # which the running mesh's replace (the edge's canary clusters expect them there).
    gateway = dataclasses.replace(STABLE.gateway, port=1234, request_timeout_s=12.0)
    mesh = dataclasses.replace(STABLE.mesh, regions=["elsewhere"], port_stride=7)
    canary = dataclasses.replace(STABLE, gateway=gateway, mesh=mesh)
    configs = canary_configs(STABLE, canary)
    assert list(configs) == ["local", "remote"]
    for shift, config in zip((0, 100), configs.values(), strict=True):
        g = config.gateway
        assert (g.port, g.openai_port, g.metrics_port) == (
            50061 + shift,
            50063 + shift,
            9474 + shift,
        )
        assert g.request_timeout_s == 12.0  # what the canary config changes, it keeps
        # Its region's links, as the stable gateway's: its Envoy listener, its Triton first.
        assert g.retrieval_target == f"127.0.0.1:{8081 + shift}"
        assert g.triton_target == f"127.0.0.1:{8001 + shift}"
        assert Path(config.control.policy_file).is_absolute()
    assert configs["remote"].gateway.region == "remote"


def test_rings_shift_the_first_region_then_every_region() -> None:
    assert [(r.percent, r.all_regions, r.every_region) for r in rings(STABLE)] == [
        (STABLE.release.ring0_percent, 0, False),
        (100, 0, False),
        (100, 100, True),
    ]
    assert rings(STABLE)[0].name == "0: 5% of local"


def test_a_mesh_without_canary_routes_cannot_release() -> None:
    release = dataclasses.replace(STABLE.release, canary_port_offset=0)
    with pytest.raises(ValueError, match="canary_port_offset is 0"):
        Release(dataclasses.replace(STABLE, release=release), STABLE)
