"""Renders Envoy's bootstrap (build/envoy.yaml) from the mesh config.

    python -m edge.render --config config/mesh.yaml --out build/envoy.yaml

Envoy is the mesh's edge. Two listeners, both on 127.0.0.1:

* public (``edge.listen_port``): HTTP/1.1 JSON and h2c gRPC on one port. The gRPC-JSON
  transcoder turns ``ragmesh.v1.Gateway``'s ``google.api.http`` routes into gRPC calls to the
  gateway; native gRPC passes straight through.
* internal (``edge.internal_port``): HTTP/2 only; the gateway reaches retrieval through it, so
  calls get Envoy's active health checks and stats.

Access logs go to stdout as JSON and never carry bodies, ``x-api-key`` or ``authorization``.
JSON requests are capped at 8 MiB (413 beyond). The transcoder would drop unknown JSON body
fields silently (Envoy 1.40 offers no option to reject them), so a Lua filter before it
(``reject_unknown_fields.lua``) answers 400 naming the first unknown field, checked against a
schema generated here from the descriptor set's ``google.api.http`` rules.
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any

import yaml
from edge.body_schema import body_schema, lua_schema

from services.mesh.config import MeshConfig

PUBLIC_SERVICES = ["ragmesh.v1.Gateway"]
# The transcoder buffers a JSON request whole before sending it on as one gRPC message.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
LOOPBACK = "127.0.0.1"

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
_TRANSCODER = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"

# The Lua half of the unknown-field check; render prepends the generated schema to it.
UNKNOWN_FIELDS_LUA = Path(__file__).with_name("reject_unknown_fields.lua")

# Headers and timings only: no bodies and no credentials (x-api-key, authorization).
ACCESS_LOG_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "traceparent": "%REQ(TRACEPARENT)%",
    "user_agent": "%REQ(USER-AGENT)%",
}


def _duration(seconds: float) -> str:
    """A protobuf Duration in its JSON/YAML form, to the millisecond: ``1.5s``, ``60s``."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def _address(port: int, host: str = LOOPBACK) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _access_log() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": _STDOUT_LOG,
                "log_format": {"json_format": ACCESS_LOG_FORMAT},
            },
        }
    ]


def _transcoder(descriptor_set: Path) -> dict[str, Any]:
    """gRPC-JSON transcoding for the public services.

    Malformed JSON and mistyped fields get 400, unknown paths 404, unknown query parameters 400.
    Unknown JSON *body* fields it would drop silently (Envoy 1.40 has no option to reject them):
    _reject_unknown_fields() answers 400 for them first.
    """
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": f"{_TRANSCODER}.GrpcJsonTranscoder",
            "proto_descriptor": str(descriptor_set),
            "services": PUBLIC_SERVICES,
            "print_options": {
                "add_whitespace": False,
                "always_print_primitive_fields": True,
                "always_print_enums_as_ints": False,
                "preserve_proto_field_names": True,
                # Server streaming as one JSON object per line instead of one JSON array.
                "stream_newline_delimited": True,
            },
            "convert_grpc_status": True,
            "request_validation_options": {
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
            },
            # Bounds only the JSON not yet parsed; _body_limit() bounds the whole body.
            "max_request_body_size": MAX_REQUEST_BYTES,
        },
    }


def _body_limit() -> dict[str, Any]:
    """Buffers a request whole, up to MAX_REQUEST_BYTES; anything larger gets 413.

    The transcoder parses JSON as it streams in, so its own limit never sees a whole body.
    Every public method takes a single request message, so buffering costs no streaming.
    """
    return {
        "name": "envoy.filters.http.buffer",
        "typed_config": {"@type": _BUFFER, "max_request_bytes": MAX_REQUEST_BYTES},
    }


def _reject_unknown_fields(descriptor_set: Path) -> dict[str, Any]:
    """400 for a JSON body with a field its message lacks, before the transcoder drops it."""
    source = lua_schema(body_schema(descriptor_set, PUBLIC_SERVICES))
    source += UNKNOWN_FIELDS_LUA.read_text(encoding="utf-8")
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {"@type": _LUA, "default_source_code": {"inline_string": source}},
    }


def _router() -> dict[str, Any]:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}


def _route_config(name: str, cluster: str, timeout_s: float) -> dict[str, Any]:
    """Everything to one cluster; a client's grpc-timeout applies, capped at the timeout."""
    route = {
        "cluster": cluster,
        "timeout": _duration(timeout_s),
        "max_stream_duration": {"grpc_timeout_header_max": _duration(timeout_s)},
    }
    return {
        "name": name,
        "virtual_hosts": [
            {
                "name": name,
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": route}],
            }
        ],
    }


def _connection_manager(
    name: str, codec: str, route_config: dict[str, Any], http_filters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": f"{_HCM}.HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": codec,
            "route_config": route_config,
            "http_filters": http_filters,
            "access_log": _access_log(),
        },
    }


def _listener(name: str, port: int, manager: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "address": _address(port),
        "filter_chains": [{"filters": [manager]}],
    }


def _public_listener(config: MeshConfig, descriptor_set: Path) -> dict[str, Any]:
    """HTTP/1.1 JSON and h2c gRPC on one port, both to the gateway."""
    edge = config.edge
    routes = _route_config("public", "gateway", edge.route_timeout_s)
    filters = [
        _body_limit(),
        _reject_unknown_fields(descriptor_set),
        _transcoder(descriptor_set),
        _router(),
    ]
    manager = _connection_manager("public", "AUTO", routes, filters)
    return _listener("public", edge.listen_port, manager)


def _internal_listener(config: MeshConfig) -> dict[str, Any]:
    """gRPC only: the gateway's calls to retrieval."""
    edge = config.edge
    routes = _route_config("internal", "retrieval", edge.route_timeout_s)
    manager = _connection_manager("internal", "HTTP2", routes, [_router()])
    return _listener("internal", edge.internal_port, manager)


def _health_check() -> dict[str, Any]:
    """The standard gRPC health protocol, overall server status (service "")."""
    return {
        "timeout": "1s",
        "interval": "2s",
        "no_traffic_interval": "2s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        "grpc_health_check": {"service_name": ""},
    }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _cluster(name: str, host: str, port: int) -> dict[str, Any]:
    """An HTTP/2 (gRPC) upstream with active health checks."""
    return {
        "name": name,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port, host)}}]}],
        },
        "health_checks": [_health_check()],
    }


def render(config: MeshConfig, *, descriptor_set: Path | None = None) -> dict[str, Any]:
    """The Envoy bootstrap for `config`, as a dict ready for YAML."""
    descriptor = (descriptor_set or Path(config.edge.descriptor_set)).resolve()
    return {
        "admin": {"address": _address(config.edge.admin_port)},
        "static_resources": {
            "listeners": [_public_listener(config, descriptor), _internal_listener(config)],
            "clusters": [
                _cluster("gateway", config.gateway.host, config.gateway.port),
                _cluster("retrieval", config.retrieval.host, config.retrieval.port),
            ],
        },
    }


def write(config: MeshConfig, out: Path) -> Path:
    """Renders `config` into the YAML file `out` (folders created) and returns `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(render(config), sort_keys=False, default_flow_style=False)
    out.write_text(text, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render Envoy's config from the mesh config.")
    parser.add_argument("--config", type=Path, default=Path("config/mesh.yaml"))
    parser.add_argument("--out", type=Path, default=Path("build/envoy.yaml"))
    args = parser.parse_args(argv)
    print(f"wrote {write(MeshConfig.load(args.config), args.out)}")


if __name__ == "__main__":
    main()
