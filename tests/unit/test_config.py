import pytest

from services.common.serving import MAX_MESSAGE_BYTES
from services.config.gateway import MAX_CONTENT_BYTES
from services.config.loading import ConfigError
from services.config.mesh import MeshConfig
from services.edge.render import MAX_REQUEST_BYTES
from services.supervisor.launcher import ROOT


def test_shipped_config_loads_and_matches_defaults():
    config = MeshConfig.load(ROOT / "config" / "mesh.yaml")
    assert config.edge.listen_port == 8080
    assert config.edge.admin_port == 9901
    assert config.gateway.api_keys["demo"]


def test_environment_overrides_a_field(monkeypatch):
    monkeypatch.setenv("RAGMESH_RETRIEVAL_CHUNK_TOKENS", "64")
    assert MeshConfig.from_dict({}).retrieval.chunk_tokens == 64


# Where each server listens, or is reached: a deployment's choice, 127.0.0.1 by default.
HOSTS = {
    "edge": "listen_host",
    "gateway": "host",
    "retrieval": "host",
    "triton": "host",
    "console": "host",
}


def test_every_address_defaults_to_loopback_in_the_code_and_the_shipped_config():
    shipped, defaults = MeshConfig.load(ROOT / "config" / "mesh.yaml"), MeshConfig()
    for section, name in HOSTS.items():
        assert getattr(getattr(defaults, section), name) == "127.0.0.1", section
        assert getattr(getattr(shipped, section), name) == "127.0.0.1", section


@pytest.mark.parametrize(
    ("variable", "value", "section", "name"),
    [
        ("RAGMESH_EDGE_LISTEN_HOST", "0.0.0.0", "edge", "listen_host"),
        ("RAGMESH_EDGE_LISTEN_HOST", '"::"', "edge", "listen_host"),
        ("RAGMESH_GATEWAY_HOST", "0.0.0.0", "gateway", "host"),
        ("RAGMESH_RETRIEVAL_HOST", "retrieval", "retrieval", "host"),
        ("RAGMESH_TRITON_HOST", "triton.ragmesh-local.svc.cluster.local", "triton", "host"),
        ("RAGMESH_CONSOLE_HOST", "0.0.0.0", "console", "host"),
    ],
)
def test_the_environment_overrides_an_address(monkeypatch, variable, value, section, name):
    monkeypatch.setenv(variable, value)
    assert getattr(getattr(MeshConfig.from_dict({}), section), name) == value.strip('"')


@pytest.mark.parametrize(
    ("section", "name", "value", "message"),
    [
        ("edge", "listen_host", "edge", "edge.listen_host: must be an IP address"),
        ("edge", "listen_host", "", "edge.listen_host: must be an IP address"),
        ("gateway", "host", "", "gateway.host: must be an IP address or a host name"),
        ("retrieval", "host", "retrieval:50052", "retrieval.host: must be an IP address or"),
        ("triton", "host", "http://triton", "triton.host: must be an IP address or a host"),
        ("console", "host", "a host", "console.host: must be an IP address or a host name"),
        ("console", "host", 8082, "console.host: must be text, not int"),
    ],
)
def test_a_bad_address_names_its_field(section, name, value, message):
    with pytest.raises(ConfigError, match=message):
        MeshConfig.from_dict({section: {name: value}})


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"gateway": {"prot": 1}}, "gateway: unknown field(s) prot"),
        ({"gateway": {"api_keys": {"t": "not-a-digest"}}}, "gateway.api_keys.t"),
        ({"retrieval": {"overlap_tokens": 500}}, "retrieval.overlap_tokens"),
        ({"gateway": {"max_content_bytes": MAX_CONTENT_BYTES + 1}}, "gateway.max_content_bytes"),
        ({"retrieval": {"hot_index": False}}, "retrieval.hybrid"),  # BM25 lives there
        ({"retrieval": {"hot_snapshot": 1}}, "retrieval.hot_snapshot: must be text, not int"),
        ({"retrieval": {"hot_snapshot": "."}}, "retrieval.hot_snapshot: must name a directory"),
        ({"retrieval": {"hot_snapshot": "data/milvus.db"}}, "retrieval.hot_snapshot: must name"),
        ({"gateway": {"workers": 0}}, "gateway.workers: must be 1..64"),
        ({"gateway": {"workers": 2, "port": 0}}, "gateway.port: must be a fixed port"),
        ({"bogus": {}}, "unknown section(s) bogus"),
        ({"gateway": {"port": "8080"}}, "gateway.port: must be a whole number, not str"),
        ({"gateway": "x"}, "gateway: must be a mapping of fields, not str"),
        ({"slo": {"total_ms": float("inf")}}, "slo.total_ms: must be a finite number"),
        ({"gateway": {"tiers": {"s": None}}}, "gateway.tiers.s: must be a mapping of fields"),
        (
            {"gateway": {"tiers": {"s": {"model": "s", "continue_on_fallback": "false"}}}},
            "gateway.tiers.s.continue_on_fallback: must be true or false, not str",
        ),
        (
            {"gateway": {"tiers": {"s": {"model": "s", "continuations": True}}}},
            "gateway.tiers.s.continuations: must be a whole number, not bool",
        ),
        (
            {"gateway": {"tiers": {"s": {"model": "s", "continue_on_fallback": True}}}},
            "gateway.tiers.continue_on_fallback: needs continuations > 0",
        ),
        (
            {"gateway": {"tiers": {"s": {"model": "s", "shared_stream": 1}}}},
            "gateway.tiers.s.shared_stream: must be true or false, not int",
        ),
        (
            {
                "gateway": {
                    "tiers": {
                        "s": {
                            "model": "s",
                            "base_url": "http://127.0.0.1:1/v1",
                            "shared_stream": True,
                        }
                    }
                }
            },
            "gateway.tiers.shared_stream: is for Triton tiers",
        ),
    ],
)
def test_bad_config_names_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(").replace(")", r"\)")):
        MeshConfig.from_dict(data)


def test_stall_budgets_under_the_slos_own_are_named_not_refused():
    tiers = {"s": {"model": "s", "first_token_timeout_s": 1.0, "inter_token_timeout_s": 0.5}}
    config = MeshConfig.from_dict({"gateway": {"tiers": tiers, "default_tier": "s"}})
    assert config.budgets_below_slo() == [
        "gateway.tiers.s.first_token_timeout_s (1 s) is under slo.time_to_first_token_ms "
        "(2.5 s): it gives up on answers in budget",
        "gateway.tiers.s.inter_token_timeout_s (0.5 s) is under slo.time_per_output_chunk_ms "
        "(1 s): it gives up on answers in budget",
    ]
    assert MeshConfig.load(ROOT / "config" / "mesh.yaml").budgets_below_slo() == []


def test_a_document_of_the_largest_content_fits_one_request_over_json_and_grpc():
    """Its base64 in a JSON body under Envoy's limit, and its bytes in one gRPC message;
    with room for the rest of the request (id, title, metadata: under 64 KiB)."""
    assert MeshConfig.from_dict({}).gateway.max_content_bytes == MAX_CONTENT_BYTES
    base64_bytes = -(-MAX_CONTENT_BYTES // 3) * 4
    assert base64_bytes + 64 * 1024 <= MAX_REQUEST_BYTES
    assert MAX_CONTENT_BYTES + 64 * 1024 <= MAX_MESSAGE_BYTES
