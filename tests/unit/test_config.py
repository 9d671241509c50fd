import pytest

from services.config.loading import ConfigError
from services.config.mesh import MeshConfig
from services.supervisor.launcher import ROOT


def test_shipped_config_loads_and_matches_defaults():
    config = MeshConfig.load(ROOT / "config" / "mesh.yaml")
    assert config.edge.listen_port == 8080
    assert config.edge.admin_port == 9901
    assert config.gateway.api_keys["demo"]


def test_environment_overrides_a_field(monkeypatch):
    monkeypatch.setenv("RAGMESH_RETRIEVAL_CHUNK_TOKENS", "64")
    assert MeshConfig.from_dict({}).retrieval.chunk_tokens == 64


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"gateway": {"prot": 1}}, "gateway: unknown field(s) prot"),
        ({"gateway": {"api_keys": {"t": "not-a-digest"}}}, "gateway.api_keys.t"),
        ({"retrieval": {"overlap_tokens": 500}}, "retrieval.overlap_tokens"),
        ({"bogus": {}}, "unknown section(s) bogus"),
    ],
)
def test_bad_config_names_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(").replace(")", r"\)")):
        MeshConfig.from_dict(data)
