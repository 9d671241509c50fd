"""Regions: each a copy of the planes on shifted ports, linked for failover and replication."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from services.config.loading import ConfigError
from services.config.mesh import MeshConfig
from services.config.regions import first, regions
from services.supervisor.launcher import ROOT, Mesh

CONFIG = Path(__file__).resolve().parents[2] / "config" / "mesh.yaml"


def test_the_second_region_is_the_first_shifted_and_linked_back() -> None:
    local, remote = regions(MeshConfig.load(CONFIG))
    assert (local.name, local.priority, remote.name, remote.priority) == ("local", 0, "remote", 1)
    assert (local.gateway_target, remote.gateway_target) == ("127.0.0.1:50051", "127.0.0.1:50151")
    assert remote.config.triton.grpc_port == 8101 and remote.config.edge.internal_port == 8181
    assert remote.config.gateway.retrieval_target == "127.0.0.1:8181"
    assert remote.config.retrieval.triton_target == remote.triton_target == "127.0.0.1:8101"
    # Each gateway tries its own Triton first, then the other region's.
    assert local.config.gateway.triton_target == "127.0.0.1:8001"
    assert local.config.gateway.triton_fallback_targets == ["127.0.0.1:8101"]
    assert remote.config.gateway.triton_fallback_targets == ["127.0.0.1:8001"]
    # The first region is the governance point; the other pulls from it.
    assert local.config.retrieval.primary_target == ""
    assert remote.config.retrieval.primary_target == "127.0.0.1:50052"
    assert (local.config.gateway.region, remote.config.retrieval.region) == ("local", "remote")


def test_each_region_keeps_its_own_data() -> None:
    local, remote = regions(MeshConfig.load(CONFIG))
    assert local.config.retrieval.milvus_uri == "data/local/milvus.db"
    assert remote.config.retrieval.milvus_uri == "data/remote/milvus.db"
    assert remote.config.retrieval.corpus_log == "data/remote/corpus-log.db"
    assert local.config.retrieval.hot_snapshot == "data/local/hot-index"
    assert remote.config.retrieval.hot_snapshot == "data/remote/hot-index"
    server = MeshConfig.load(CONFIG)
    retrieval = dataclasses.replace(
        server.retrieval, milvus_uri="http://milvus:19530", hot_snapshot=""
    )
    _, remote = regions(dataclasses.replace(server, retrieval=retrieval))
    assert remote.config.retrieval.milvus_uri == "http://milvus:19530"
    assert remote.config.retrieval.collection == "ragmesh_chunks_remote"
    assert remote.config.retrieval.hot_snapshot == ""  # none saved, in no region


@pytest.mark.parametrize(
    ("milvus_uri", "written"),
    [
        ("http://milvus:19530", "http://milvus:19530"),  # not http:/milvus:19530
        ("https://in01-x.zillizcloud.com:443", "https://in01-x.zillizcloud.com:443"),
        ("data/milvus.db", str(ROOT / "data" / "local" / "milvus.db")),
    ],
)
def test_the_launcher_gives_retrieval_a_server_uri_as_it_is(
    tmp_path: Path, milvus_uri: str, written: str
) -> None:
    base = first(MeshConfig.load(CONFIG), 1)
    retrieval = dataclasses.replace(base.retrieval, milvus_uri=milvus_uri)
    mesh = dataclasses.replace(base.mesh, data_dir=str(tmp_path))
    Mesh(dataclasses.replace(base, mesh=mesh, retrieval=retrieval))._write_configs()
    config = yaml.safe_load((tmp_path / "run" / "local" / "mesh.yaml").read_text())
    assert config["retrieval"]["milvus_uri"] == written


def test_first_picks_regions_and_names_the_flag() -> None:
    config = MeshConfig.load(CONFIG)
    assert [r.name for r in regions(first(config, 1))] == ["local"]
    with pytest.raises(ValueError, match=r"--regions: 3 is not 1\.\.2"):
        first(config, 3)


@pytest.mark.parametrize(
    ("regions_value", "message"),
    [([], "mesh.regions: must name"), (["a", "a"], "unique"), (["Bad Name"], "mesh.regions")],
)
def test_region_names_are_checked(regions_value: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MeshConfig.from_dict({"mesh": {"regions": regions_value}})
