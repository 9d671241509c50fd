"""Renders Envoy's bootstrap (build/envoy.yaml) from the mesh config.

    python -m services.edge.render --config config/mesh.yaml --out build/envoy.yaml

Envoy is the mesh's edge. Two listeners:

* public (``edge.listen_host``:``edge.listen_port``; 127.0.0.1 in the local mesh, every
  interface in a pod): HTTP/1.1 JSON and h2c gRPC on one port. The gRPC-JSON
  transcoder turns ``ragmesh.v1.Gateway``'s ``google.api.http`` routes into gRPC calls to the
  gateway; native gRPC passes straight through. OpenAI's paths (OPENAI_PATHS) go as they are
  to the gateways' OpenAI-compatible API (``gateway.openai_port``, HTTP/1.1), by the same
  region priorities.
* internal, one per region (127.0.0.1, that region's ``edge.internal_port``): HTTP/2 only;
  the region's gateway, on Envoy's host, reaches retrieval through it. Searches go to the
  region's own retrieval first and to the other regions' by priority; writes (Upsert,
  Delete) go to the governance point only.

Regions (``mesh.regions``) are Envoy priorities: the default region's gateway at priority 0,
the others at 1..N. Every upstream has active gRPC health checks, outlier detection that
ejects a host requests cannot reach (never a cluster's last host, never for what a host
answers), circuit breakers with a retry budget; routes retry the server's failures (never a
client's) on the next priority, with per-try timeouts, inside the client's own deadline
(``grpc-timeout``). A fault filter on each internal listener can
delay retrieval for game days; it is inert until its runtime keys are set through the admin
port (``chaos.<region>.retrieval.delay_percent``, ``...delay_ms``).

Release rings (``release.canary_port_offset`` not 0): every route to the gateways has two
twins before it, Envoy's traffic shifting by runtime fraction. ``release.canary.all_regions``
(0 or 100) sends that share to ``*-canary-all``, every region's canary gateway (ring 2);
``release.canary.percent`` sends its share to ``*-canary``, the first region's canary
(rings 0 and 1). Both keys are 0 until ``ragmesh release`` sets them through the admin port
(services/supervisor/release.py), so the canary routes take nothing until then.

The admin port stays on 127.0.0.1 (it can stop Envoy and set its runtime keys). Gateways,
retrieval and the console are reached at their sections' ``host``: an IP address, or a name
Envoy resolves (STRICT_DNS, every address a host: a Kubernetes headless Service's pods).

Access logs go to stdout as JSON and never carry bodies, ``x-api-key`` or ``authorization``.
Requests are capped at 32 MiB (413 beyond). A Lua filter before the transcoder
(``request_guard.lua``), the request guard, answers INVALID_ARGUMENT at the edge for
what the request itself gets wrong, so that no client mistake reaches a gateway as a reset,
a hang or an INTERNAL: a gRPC content type other than protobuf, a gRPC request without
``te: trailers`` or with a malformed body, a malformed ``grpc-timeout``, ``grpc-encoding``
or binary header, a response-only header, and (for JSON, which the transcoder would drop
silently; Envoy 1.40 offers no option to reject them) an unknown body field, checked against
a schema generated here from the descriptor set. It tells gRPC from JSON by Envoy's own rule,
the one the transcoder uses.
"""

from __future__ import annotations

import argparse
import copy
import math
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from services.common.serving import DEGRADABLE
from services.config.gateway import LOCAL_HOSTS, worker_sockets
from services.config.loading import is_ip
from services.config.mesh import MeshConfig
from services.config.regions import Region, regions
from services.edge.body_schema import body_schema, lua_schema

PUBLIC_SERVICES = ["ragmesh.v1.Gateway", "ragmesh.v1.Admin"]
# Served by the gateways' OpenAI-compatible API (services/gateway/openai_api.py).
OPENAI_PATHS = ("/v1/chat/completions", "/v1/embeddings", "/v1/models")
# Its failures worth another region, before the response starts: the host is gone or reset
# the request, or answered 503 (a stream answers its status with its first event). Never a
# client's mistake, a 429, a 500 or a 504.
OPENAI_RETRY_ON = "connect-failure,refused-stream,reset,retriable-status-codes"
# The transcoder buffers a JSON request whole before sending it on as one gRPC message: a
# document's content of gateway.max_content_bytes (20 MiB at most) is 26.7 MiB of base64.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
LOOPBACK = "127.0.0.1"

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
_TRANSCODER = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
_PREVIOUS_PRIORITIES = (
    "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3"
    ".PreviousPrioritiesConfig"
)
_PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)

# Failures of the server, worth another region: the host is gone, refused the stream, reset it
# (or a try timed out), or said UNAVAILABLE or CANCELLED. Never a client's mistake: the guard
# refuses the requests that made a gateway reset or hang, and INVALID_ARGUMENT, NOT_FOUND,
# FAILED_PRECONDITION, UNIMPLEMENTED, INTERNAL and DEADLINE_EXCEEDED are not retried.
RETRY_ON = "connect-failure,refused-stream,reset,unavailable,cancelled"
# A write is tried again only where it never reached a host.
UNSENT = "connect-failure,refused-stream"
WRITE_PATHS = ("/ragmesh.retrieval.v1.Retrieval/Upsert", "/ragmesh.retrieval.v1.Retrieval/Delete")
PUBLIC_WRITE_PATHS = (
    "/ragmesh.v1.Gateway/IngestDocuments",
    "/ragmesh.v1.Gateway/DeleteDocument",
    # Admin writes: a retry of a CreateKey that did land would make a second key.
    "/ragmesh.v1.Admin/CreateTenant",
    "/ragmesh.v1.Admin/UpdateTenant",
    "/ragmesh.v1.Admin/CreateKey",
    "/ragmesh.v1.Admin/RotateKey",
    "/ragmesh.v1.Admin/RevokeKey",
)

# The Lua request guard; render prepends the generated schema to it.
# Envoy's own files stay in the repository's envoy/ folder.
REQUEST_GUARD_LUA = Path(__file__).resolve().parents[2] / "envoy" / "request_guard.lua"

# The runtime keys of the release rings (module docstring): shares in percent, 0 by default.
CANARY_PERCENT = "release.canary.percent"
CANARY_ALL_REGIONS = "release.canary.all_regions"
# The clusters whose routes get canary twins, and the two canary clusters of each.
GATEWAY_CLUSTERS = ("gateway", "gateway-openai")

# Timings and what the mesh itself names, never what a client wrote: no bodies, no
# credentials (x-api-key, authorization), no query string, user agent or request id. The
# path is the one the request was routed by: a JSON call's gRPC method (the transcoder's
# rewrite; a document id in DELETE /v1/documents/{id} stays out), an OpenAI path as sent.
ACCESS_LOG_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%PATH(NQ:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "trace_id": "%TRACE_ID%",
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
    _request_guard() answers 400 for them first.
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


def _request_guard(descriptor_set: Path) -> dict[str, Any]:
    """The request guard: INVALID_ARGUMENT for what a request itself gets wrong, before the
    transcoder (which drops unknown JSON fields) and before any gateway (module docstring)."""
    source = lua_schema(body_schema(descriptor_set, PUBLIC_SERVICES))
    source += REQUEST_GUARD_LUA.read_text(encoding="utf-8")
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {"@type": _LUA, "default_source_code": {"inline_string": source}},
    }


def _router() -> dict[str, Any]:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}


def _retry_policy(num_retries: int, per_try_timeout_s: float, retry_on: str) -> dict[str, Any]:
    """Retries on another host of the next priority (region), each try with its own timeout."""
    return {
        "retry_on": retry_on,
        "num_retries": num_retries,
        "per_try_timeout": _duration(per_try_timeout_s),
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {"@type": _PREVIOUS_PRIORITIES, "update_frequency": 1},
        },
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": _PREVIOUS_HOSTS},
            }
        ],
        "host_selection_retry_max_attempts": 3,
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
    }


def _route(
    match: dict[str, Any], cluster: str, timeout_s: float, retry: dict[str, Any]
) -> dict[str, Any]:
    """The client's grpc-timeout, capped at `timeout_s`, bounds the whole request, retries
    included: the connection manager's stream duration, answered DEADLINE_EXCEEDED. Its expiry
    resets the upstream request without charging the host's outlier detector.

    No route `timeout`: with max_stream_duration set, the router ignores it (1.40
    source/common/router/router.cc, FilterUtility::finalTimeout, `if
    (!route.usingNewTimeouts())`; measured), so a request without grpc-timeout is bounded by
    the per-try timeouts of its tries. Nor a default max_stream_duration: the connection
    manager would then overwrite a malformed grpc-timeout of a gRPC request with it
    (ActiveStream::refreshDurationTimeout) before the request guard could refuse it.
    """
    action = {
        "cluster": cluster,
        "max_stream_duration": {"grpc_timeout_header_max": _duration(timeout_s)},
        "retry_policy": retry,
    }
    return {"match": match, "route": action}


def _route_config(name: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
    }


def _tracing(config: MeshConfig, *, entry: bool) -> dict[str, Any] | None:
    """Envoy's OpenTelemetry tracer: starts (or continues) the trace and sends it on as
    `traceparent`; spans go over OTLP/HTTP to the collector, off the request path.

    The mesh's entry (`entry`, the public listener) samples `sample_ratio` of the requests.
    An internal listener must follow the gateway's decision: Envoy keeps a caller's sampled
    flag only for its own `random_sampling` share and never samples an unsampled caller
    (measured on 1.40: at 50 % a third of sampled gateway calls lost their retrieval spans;
    at 0 all did), so internal listeners run at 100 %."""
    t = config.telemetry
    if not t.otlp_endpoint:
        return None
    return {
        "random_sampling": {"value": t.sample_ratio * 100 if entry else 100.0},
        # What a client wrote stays out of the edge's spans, as out of its access log:
        # Envoy's default tags of the URL (its query string, a document id) and the user
        # agent, which it cannot leave out, are overwritten (custom tags are set last).
        "custom_tags": [
            {"tag": tag, "literal": {"value": "-"}} for tag in ("http.url", "user_agent")
        ],
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _OTEL,
                "service_name": "ragmesh-edge",
                "http_service": {
                    "http_uri": {
                        "uri": f"{t.otlp_endpoint.rstrip('/')}/v1/traces",
                        "cluster": "otlp",
                        "timeout": "1s",
                    }
                },
            },
        },
    }


def _otlp_cluster(endpoint: str) -> dict[str, Any]:
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname or LOOPBACK, url.port or (443 if url.scheme == "https" else 80)
    return {
        "name": "otlp",
        "type": "STATIC" if is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "otlp",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port, host)}}]}],
        },
    }


def _connection_manager(
    name: str,
    codec: str,
    route_config: dict[str, Any],
    http_filters: list[dict[str, Any]],
    tracing: dict[str, Any] | None,
) -> dict[str, Any]:
    manager = {
        "@type": f"{_HCM}.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": codec,
        "route_config": route_config,
        "http_filters": http_filters,
        "access_log": _access_log(),
    }
    if tracing is not None:
        manager["tracing"] = tracing
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}


def _listener(
    name: str, port: int, manager: dict[str, Any], host: str = LOOPBACK
) -> dict[str, Any]:
    return {
        "name": name,
        "address": _address(port, host),
        "filter_chains": [{"filters": [manager]}],
    }


def _public_listener(config: MeshConfig, descriptor_set: Path) -> dict[str, Any]:
    """HTTP/1.1 JSON and h2c gRPC on one port, both to the gateways, by region priority.

    A try may take the gateway's whole request budget, and a second try goes to the next
    region; the client's grpc-timeout, capped, bounds both together. Writes (ingest, delete)
    have the gateway's write budget, and are tried again only where they never reached a
    gateway (a client replays them: they are idempotent).
    """
    edge, gateway = config.edge, config.gateway
    retry = _retry_policy(2, gateway.request_timeout_s + 1.0, RETRY_ON)
    route = _route({"prefix": "/"}, "gateway", edge.route_timeout_s, retry)
    # The transcoder rewrites a JSON request's path to its gRPC method's before routing.
    writes = _retry_policy(2, gateway.write_timeout_s + 1.0, UNSENT)
    write_routes = [
        _route({"path": path}, "gateway", gateway.write_timeout_s, writes)
        for path in PUBLIC_WRITE_PATHS
    ]
    filters = [
        _body_limit(),
        _request_guard(descriptor_set),
        _transcoder(descriptor_set),
        _router(),
    ]
    openai = [
        _openai_route(path, gateway.request_timeout_s, edge.route_timeout_s)
        for path in OPENAI_PATHS
    ]
    gateway_routes = _with_canaries([*openai, *write_routes, route], config)
    routes = _route_config("public", [_console_route(), *gateway_routes])
    manager = _connection_manager("public", "AUTO", routes, filters, _tracing(config, entry=True))
    return _listener("public", edge.listen_port, manager, edge.listen_host)


def _canary_twin(route: dict[str, Any], runtime_key: str, cluster: str) -> dict[str, Any]:
    """`route` to `cluster` for the share of its requests that `runtime_key` names (percent,
    default 0): Envoy's traffic shifting. The rest fall through to the routes after it."""
    twin = copy.deepcopy(route)
    twin["match"]["runtime_fraction"] = {
        "default_value": {"numerator": 0, "denominator": "HUNDRED"},
        "runtime_key": runtime_key,
    }
    twin["route"]["cluster"] = cluster
    return twin


def _with_canaries(routes: list[dict[str, Any]], config: MeshConfig) -> list[dict[str, Any]]:
    """`routes`, each route to the gateways preceded by its canary twins: ring 2's
    (every region's canary), then rings 0 and 1's (the first region's). None without a
    canary port offset."""
    if not config.release.canary_port_offset:
        return routes
    shifted = []
    for route in routes:
        cluster = route["route"]["cluster"]
        if cluster in GATEWAY_CLUSTERS:
            shifted.append(_canary_twin(route, CANARY_ALL_REGIONS, f"{cluster}-canary-all"))
            shifted.append(_canary_twin(route, CANARY_PERCENT, f"{cluster}-canary"))
        shifted.append(route)
    return shifted


def _console_route() -> dict[str, Any]:
    """/topology goes to the console (plain HTTP, GET): transcoding and the body check are off."""
    off = {"@type": _FILTER_CONFIG, "disabled": True}
    return {
        "match": {"prefix": "/topology"},
        "route": {"cluster": "console", "timeout": "5s"},
        "typed_per_filter_config": {
            "envoy.filters.http.grpc_json_transcoder": off,
            "envoy.filters.http.lua": off,
        },
    }


def _openai_route(path: str, request_timeout_s: float, timeout_s: float) -> dict[str, Any]:
    """One OpenAI path to the gateways' OpenAI API: transcoding and the gRPC body check off;
    a try may take the gateway's request budget, the whole request (a stream's last event
    included) `timeout_s`. The gateway reads its try's time from
    x-envoy-expected-rq-timeout-ms."""
    off = {"@type": _FILTER_CONFIG, "disabled": True}
    retry = _retry_policy(2, request_timeout_s + 1.0, OPENAI_RETRY_ON)
    retry["retriable_status_codes"] = [503]
    return {
        # The path and anything under it (/v1/models/standard), but not /v1/models-x.
        "match": {"path_separated_prefix": path},
        "route": {
            "cluster": "gateway-openai",
            "timeout": _duration(timeout_s),
            "retry_policy": retry,
        },
        "typed_per_filter_config": {
            "envoy.filters.http.grpc_json_transcoder": off,
            "envoy.filters.http.lua": off,
        },
    }


def _console_cluster(host: str, port: int) -> dict[str, Any]:
    """The topology page's server: HTTP/1.1 at `console.host`."""
    return {
        "name": "console",
        "type": "STATIC" if is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "console",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port, host)}}]}],
        },
    }


def _fault(region: str) -> dict[str, Any]:
    """Delays requests to retrieval when the region's chaos runtime keys say so; else inert."""
    prefix = f"chaos.{region}.retrieval"
    return {
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": _FAULT,
            "delay": {"fixed_delay": "0.001s", "percentage": {"numerator": 0}},
            "delay_percent_runtime": f"{prefix}.delay_percent",
            "delay_duration_runtime": f"{prefix}.delay_ms",
        },
    }


def _internal_listener(region: Region) -> dict[str, Any]:
    """gRPC only: one region's gateway to retrieval. Writes go to the governance point.

    Reads try the region's own retrieval, then the next region's. A degradable search gets
    half of the gateway's retrieval budget a try, so a hung region costs half of it; any
    other read gets the client's deadline a try (its tries still end with that deadline).
    """
    c = region.config
    timeout = c.edge.route_timeout_s
    write_timeout = c.gateway.write_timeout_s
    writes = _retry_policy(1, write_timeout, UNSENT)
    degradable = _retry_policy(1, c.gateway.retrieval_timeout_s / 2, RETRY_ON)
    reads = _retry_policy(1, timeout, RETRY_ON)
    cluster = f"retrieval-{region.name}"
    routes = [
        _route({"path": path}, "retrieval-governance", write_timeout, writes)
        for path in WRITE_PATHS
    ]
    # The gateway marks the searches it degrades without (a generation's sources).
    marked = {"prefix": "/", "headers": [{"name": DEGRADABLE[0], "present_match": True}]}
    routes.append(_route(marked, cluster, timeout, degradable))
    routes.append(_route({"prefix": "/"}, cluster, timeout, reads))
    name = f"internal-{region.name}"
    filters = [_fault(region.name), _router()]
    routes_config = _route_config(name, routes)
    tracing = _tracing(c, entry=False)
    manager = _connection_manager(name, "HTTP2", routes_config, filters, tracing)
    return _listener(name, c.edge.internal_port, manager)


def _health_check(*, grpc: bool = True) -> dict[str, Any]:
    """The standard gRPC health protocol, overall server status (service ""); not `grpc`
    (the OpenAI API): GET /health, 200 while serving.

    Every second, with or without traffic, so a region that returns serves again within
    a few seconds and a dead one is marked down after two misses.
    """
    check = (
        {"grpc_health_check": {"service_name": ""}}
        if grpc
        else {"http_health_check": {"path": "/health"}}
    )
    return {
        "timeout": "1s",
        "interval": "1s",
        "no_traffic_interval": "1s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        **check,
    }


def _max_ejection_percent(hosts: int) -> int:
    """The share of `hosts` Envoy may eject: all but one, so the last is never ejected.

    Envoy ejects while 100 * (ejected + 1) / hosts <= max_ejection_percent, counting the hosts
    of every priority together (1.40 source/common/upstream/outlier_detection_impl.cc,
    DetectorImpl::ejectHost); a one-host cluster gets 0 and is never ejected. Past 100 hosts
    the cap of 99 keeps more than one.
    """
    return min(99, math.ceil(100 * (hosts - 1) / hosts))


def _outlier_detection(hosts: int) -> dict[str, Any]:
    """Ejects a host that 3 requests in a row could not reach, for 5 s at first and never
    longer than 10 s (or until its next passing health check), and never the last host.

    Only local-origin failures eject (split_external_local_origin_errors; 1.40
    source/common/router/router.cc and source/common/upstream/outlier_detection_impl.cc): a
    connect failure, a reset, or a per-try timeout of the router. Every stream the host
    accepts reports a local-origin success first, so only attempts that fail without the host
    accepting any stream in between add up: a dead or unreachable host.

    A host's own answers never eject: the router maps a trailers-only grpc-status to HTTP
    (UNIMPLEMENTED 501, INTERNAL and UNKNOWN 500, UNAVAILABLE 503, DEADLINE_EXCEEDED 504), and
    a client provokes each of them (an unknown method, an undecodable message, a deadline too
    short to serve). Consecutive 5xx and gateway failures are detected but not enforced. The
    expiry of the client's grpc-timeout reports nothing (_route()).
    """
    return {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 3,
        "enforcing_consecutive_local_origin_failure": 100,
        "consecutive_gateway_failure": 3,
        "enforcing_consecutive_gateway_failure": 0,
        "consecutive_5xx": 5,
        "enforcing_consecutive_5xx": 0,
        "interval": "1s",
        "base_ejection_time": "5s",
        "max_ejection_time": "10s",
        "max_ejection_percent": _max_ejection_percent(hosts),
    }


def _circuit_breakers() -> dict[str, Any]:
    """Explicit limits per upstream cluster; retries may add at most 20% to the load."""
    return {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_connections": 1024,
                "max_pending_requests": 1024,
                "max_requests": 1024,
                "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 5},
                "track_remaining": True,
            }
        ]
    }


def _cluster(
    name: str, priorities: list[list[dict[str, Any]]], *, grpc: bool = True
) -> dict[str, Any]:
    """An HTTP/2 (gRPC) upstream, or HTTP/1.1 if not `grpc`; the hosts of priorities[i]
    (Envoy addresses) are priority i, balanced round robin. Health-checked and guarded."""
    names = {
        a["socket_address"]["address"]
        for hosts in priorities
        for a in hosts
        if "socket_address" in a
    }
    protocol: dict[str, Any] = (
        {"http2_protocol_options": {}} if grpc else {"http_protocol_options": {}}
    )
    return {
        "name": name,
        "type": "STATIC" if all(is_ip(n) for n in names) else "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": protocol,
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "priority": priority,
                    "lb_endpoints": [{"endpoint": {"address": address}} for address in hosts],
                }
                for priority, hosts in enumerate(priorities)
            ],
        },
        "health_checks": [_health_check(grpc=grpc)],
        "outlier_detection": _outlier_detection(sum(len(hosts) for hosts in priorities)),
        "circuit_breakers": _circuit_breakers(),
    }


def _gateway_hosts(region: Region, port: int) -> list[dict[str, Any]]:
    """A region's gateway serving `port`'s API, as Envoy's hosts: each worker's own Unix
    socket where its workers are on Envoy's host (services/gateway/workers.py
    worker_sockets: requests, not connections, are balanced over them), else the port."""
    gateway = region.config.gateway
    if gateway.host in LOCAL_HOSTS:
        sockets = worker_sockets(region.config.mesh.data_dir, port, gateway.workers)
        if sockets:
            return [{"pipe": {"path": str(path)}} for path in sockets]
    return [_address(port, gateway.host)]


def _canary_clusters(mesh: list[Region], name: str, api_port: str) -> list[dict[str, Any]]:
    """The canary clusters of gateway cluster `name` (`api_port`: the gateway config's field
    of its port), each region's canary serving on that port plus the offset, by TCP (a
    canary's workers share it).

    `<name>-canary` (rings 0 and 1): the first region's canary, then every region's stable
    gateway by priority; `<name>-canary-all` (ring 2): every region's canary by priority,
    then every stable gateway. A request a canary fails is tried again on the next priority,
    the stable path after the last canary (the routes' retry policies)."""
    offset = mesh[0].config.release.canary_port_offset
    grpc = name == "gateway"

    def stable(r: Region) -> list[dict[str, Any]]:
        return _gateway_hosts(r, getattr(r.config.gateway, api_port))

    def canary(r: Region) -> list[dict[str, Any]]:
        return [_address(getattr(r.config.gateway, api_port) + offset, r.config.gateway.host)]

    ring1 = [canary(mesh[0]), *(stable(r) for r in mesh)]
    ring2 = [*(canary(r) for r in mesh), *(stable(r) for r in mesh)]
    return [
        _cluster(f"{name}-canary", ring1, grpc=grpc),
        _cluster(f"{name}-canary-all", ring2, grpc=grpc),
    ]


def _clusters(mesh: list[Region]) -> list[dict[str, Any]]:
    def retrieval(r: Region) -> list[dict[str, Any]]:
        return [_address(r.config.retrieval.port, r.config.retrieval.host)]

    clusters = [
        _cluster("gateway", [_gateway_hosts(r, r.config.gateway.port) for r in mesh]),
        _cluster(
            "gateway-openai",
            [_gateway_hosts(r, r.config.gateway.openai_port) for r in mesh],
            grpc=False,
        ),
        _cluster("retrieval-governance", [retrieval(mesh[0])]),
    ]
    if mesh[0].config.release.canary_port_offset:
        clusters += _canary_clusters(mesh, "gateway", "port")
        clusters += _canary_clusters(mesh, "gateway-openai", "openai_port")
    for region in mesh:
        ordered = [region, *(r for r in mesh if r is not region)]
        clusters.append(_cluster(f"retrieval-{region.name}", [retrieval(r) for r in ordered]))
    return clusters


def render(config: MeshConfig, *, descriptor_set: Path | None = None) -> dict[str, Any]:
    """The Envoy bootstrap for every region of `config`, as a dict ready for YAML."""
    mesh = regions(config)
    descriptor = (descriptor_set or Path(config.edge.descriptor_set)).resolve()
    listeners = [_public_listener(config, descriptor)]
    listeners += [_internal_listener(region) for region in mesh]
    clusters = [*_clusters(mesh), _console_cluster(config.console.host, config.console.port)]
    if config.telemetry.otlp_endpoint:
        clusters.append(_otlp_cluster(config.telemetry.otlp_endpoint))
    return {
        "admin": {"address": _address(config.edge.admin_port)},
        # The admin layer lets /runtime_modify set the chaos keys of the fault filters and
        # the release rings' canary shares.
        "layered_runtime": {"layers": [{"name": "admin", "admin_layer": {}}]},
        # Histograms reach /stats/prometheus at each flush: every second, for the console.
        "stats_flush_interval": "1s",
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def write(config: MeshConfig, out: Path, *, descriptor_set: Path | None = None) -> Path:
    """Renders `config` into the YAML file `out` (folders created) and returns `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = render(config, descriptor_set=descriptor_set)
    out.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), "utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render Envoy's config from the mesh config.")
    parser.add_argument("--config", type=Path, default=Path("config/mesh.yaml"))
    parser.add_argument("--out", type=Path, default=Path("build/envoy.yaml"))
    args = parser.parse_args(argv)
    print(f"wrote {write(MeshConfig.load(args.config), args.out)}")


if __name__ == "__main__":
    main()
