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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

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
# The google.api.http verbs whose rules may take a body.
_BODY_VERBS = ("post", "put", "patch")

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


@dataclass(frozen=True)
class BodySchema:
    """The JSON bodies the transcoder takes, as reject_unknown_fields.lua checks them.

    ``routes`` maps an HTTP method and exact path to the body's kind, ``patterns`` holds
    (method, anchored Lua pattern, kind) for templated paths, and ``messages`` maps a message to
    its JSON keys (proto name and json_name alike) and their kinds. A kind is ``message:<name>``
    (singular or repeated), ``map:<name>`` (keys open, message values), ``map`` (keys open,
    scalar values), ``well_known`` (google.protobuf types: their own JSON forms) or ``scalar``.
    """

    routes: dict[str, dict[str, str]] = field(default_factory=dict)
    patterns: list[tuple[str, str, str]] = field(default_factory=list)
    messages: dict[str, dict[str, str]] = field(default_factory=dict)


def _message_types(files: Any) -> dict[str, Any]:
    """Every DescriptorProto in `files` by full name (no leading dot), nested ones included."""
    found: dict[str, Any] = {}

    def add(prefix: str, message: Any) -> None:
        name = f"{prefix}.{message.name}" if prefix else message.name
        found[name] = message
        for nested in message.nested_type:
            add(name, nested)

    for file in files:
        for message in file.message_type:
            add(file.package, message)
    return found


def _lower_camel(name: str) -> str:
    """protoc's default json_name: each ``_`` dropped and the letter after it upper-cased."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _kind(field_proto: Any, types: dict[str, Any]) -> str:
    """How the JSON value of a field is checked; see BodySchema."""
    if field_proto.type != descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE:
        return "scalar"
    name = field_proto.type_name.lstrip(".")
    if name.startswith("google.protobuf."):
        return "well_known"
    message = types[name]
    if message.options.map_entry:
        (value,) = (f for f in message.field if f.name == "value")
        values = _kind(value, types)
        return "map:" + values.removeprefix("message:") if values.startswith("message:") else "map"
    return f"message:{name}"


def _collect(name: str, types: dict[str, Any], out: dict[str, dict[str, str]]) -> None:
    """Adds message `name` and every message reachable from its fields to `out`."""
    if name in out:
        return
    keys: dict[str, str] = {}
    out[name] = keys
    for field_proto in types[name].field:
        kind = _kind(field_proto, types)
        keys[field_proto.name] = kind
        keys[field_proto.json_name or _lower_camel(field_proto.name)] = kind
        nested = kind.partition(":")[2]
        if nested:
            _collect(nested, types, out)


def _lua_pattern(template: str) -> str | None:
    """A google.api.http path template as an anchored Lua pattern; None for a plain path."""
    if "{" not in template and "*" not in template:
        return None
    resolved = re.sub(r"\{[^}=]+(?:=([^}]*))?\}", lambda m: m.group(1) or "*", template)
    parts = []
    for token in re.split(r"(\*\*|\*)", resolved):
        if token == "**":
            parts.append(".*")
        elif token == "*":
            parts.append("[^/]+")
        else:
            parts.append(re.sub(r"(\W)", r"%\1", token))
    return "^" + "".join(parts) + "$"


def _body_kind(rule: Any, request: str, types: dict[str, Any]) -> str | None:
    """The kind of a rule's JSON body, or None where it takes none (or one with no keys)."""
    if not rule.body:
        return None
    if rule.body == "*":
        return f"message:{request}"
    (field_proto,) = (f for f in types[request].field if f.name == rule.body)
    kind = _kind(field_proto, types)
    return kind if kind.startswith(("message:", "map:")) else None


def body_schema(descriptor_set: Path, services: list[str] = PUBLIC_SERVICES) -> BodySchema:
    """The schema of every JSON body `services`' google.api.http rules take.

    Rules without a body (``DELETE /v1/documents/{id}``, ``GET /v1/status``) are left out.
    """
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    types = _message_types(files)
    schema = BodySchema()
    found = set()
    for file in files:
        for service in file.service:
            full_name = f"{file.package}.{service.name}" if file.package else service.name
            if full_name not in services:
                continue
            found.add(full_name)
            for method in service.method:
                http = method.options.Extensions[annotations_pb2.http]
                request = method.input_type.lstrip(".")
                for rule in [http, *http.additional_bindings]:
                    verb = rule.WhichOneof("pattern")
                    if verb is None:
                        continue
                    custom = verb == "custom"
                    http_method = (rule.custom.kind if custom else verb).upper()
                    template = rule.custom.path if custom else getattr(rule, verb)
                    kind = _body_kind(rule, request, types)
                    if kind is None or http_method.lower() not in _BODY_VERBS:
                        continue
                    nested = kind.partition(":")[2]
                    _collect(nested, types, schema.messages)
                    pattern = _lua_pattern(template)
                    if pattern is None:
                        schema.routes.setdefault(http_method, {})[template] = kind
                    else:
                        schema.patterns.append((http_method, pattern, kind))
    missing = sorted(set(services) - found)
    if missing:
        raise ValueError(f"{descriptor_set} lacks the services {missing}")
    return schema


def _lua_string(text: str) -> str:
    """A Lua string literal; anything but printable ASCII as decimal byte escapes."""
    chars = []
    for char in text:
        if char.isascii() and char.isprintable() and char not in '"\\':
            chars.append(char)
        else:
            chars.extend(f"\\{byte:03d}" for byte in char.encode())
    return '"' + "".join(chars) + '"'


def _lua_schema(schema: BodySchema) -> str:
    """`schema` as the Lua tables ROUTES, PATTERNS and MESSAGES."""
    lines = [
        "-- Generated by edge.render from the descriptor set: do not edit.",
        "local ROUTES = {",
    ]
    for method, paths in sorted(schema.routes.items()):
        lines.append(f"  [{_lua_string(method)}] = {{")
        lines += [f"    [{_lua_string(p)}] = {_lua_string(k)}," for p, k in sorted(paths.items())]
        lines.append("  },")
    lines += ["}", "local PATTERNS = {"]
    lines += [f"  {{{', '.join(_lua_string(x) for x in route)}}}," for route in schema.patterns]
    lines += ["}", "local MESSAGES = {"]
    for message, keys in sorted(schema.messages.items()):
        lines.append(f"  [{_lua_string(message)}] = {{")
        lines += [
            f"    [{_lua_string(key)}] = {_lua_string(k)}," for key, k in sorted(keys.items())
        ]
        lines.append("  },")
    lines += ["}", ""]
    return "\n".join(lines)


def _reject_unknown_fields(descriptor_set: Path) -> dict[str, Any]:
    """400 for a JSON body with a field its message lacks, before the transcoder drops it."""
    source = _lua_schema(body_schema(descriptor_set))
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
