"""A client's mistakes are its own: a 4xx status (INVALID_ARGUMENT, NOT_FOUND, ...) from the
edge or the gateway, never an Envoy retry, never a step towards ejecting the gateway, which
goes on serving everyone else (issue 13, part 5). Through the real mesh and its Envoy.
"""

from __future__ import annotations

import http.client
import json
import re
import struct
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import NamedTuple

import grpc
import pytest
from ragmesh.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.integration

GATEWAY = "/ragmesh.v1.Gateway"
SEARCH = pb.SearchRequest(query="tea").SerializeToString()

# The cluster's counters that a client's mistake must leave alone.
UNTOUCHED = [
    "cluster.gateway.upstream_rq_retry",
    "cluster.gateway.upstream_rq_per_try_timeout",
    "cluster.gateway.outlier_detection.ejections_enforced_total",
    # The one kind of ejection that is enforced (the others are detected, not enforced).
    "cluster.gateway.outlier_detection.ejections_detected_consecutive_local_origin_failure",
]


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class Outcome(NamedTuple):
    """A gRPC status name, or "HTTP <code>" for JSON, and the message."""

    status: str
    message: str


@pytest.fixture(scope="module")
def channel(mesh) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mesh.edge_target) as opened:
        yield opened


def _send(mesh, path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> Reply:
    """One HTTP/1.1 request through Envoy with exactly `headers`."""
    connection = http.client.HTTPConnection("127.0.0.1", mesh.config.edge.listen_port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def _json(mesh, path: str, body: bytes, key: str, **headers: str) -> Outcome:
    reply = _send(mesh, path, body, {"x-api-key": key, **headers})
    try:
        message = str(json.loads(reply.body).get("message", ""))
    except ValueError:
        message = reply.body.decode(errors="replace")
    return Outcome(f"HTTP {reply.status}", message)


def _frame(message: bytes, length: int | None = None) -> bytes:
    return b"\x00" + struct.pack(">I", len(message) if length is None else length) + message


def _grpc_http1(mesh, path: str, body: bytes, key: str, **headers: str) -> Outcome:
    """A gRPC request over HTTP/1.1, headers as given; the status of a trailers-only answer."""
    reply = _send(mesh, path, body, {"x-api-key": key, **headers})
    code = reply.headers.get("grpc-status")
    name = grpc.StatusCode.OK.name if code is None else _code_name(int(code))
    return Outcome(name, urllib.parse.unquote(reply.headers.get("grpc-message", "")))


def _code_name(value: int) -> str:
    return next(code.name for code in grpc.StatusCode if code.value[0] == value)


def _grpc(
    channel: grpc.Channel,
    method: str,
    payload: bytes,
    key: str,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout: float | None = 60,
) -> Outcome:
    call = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
    try:
        call(payload, metadata=(("x-api-key", key), *metadata), timeout=timeout)
    except grpc.RpcError as error:
        return Outcome(error.code().name, error.details() or "")
    return Outcome(grpc.StatusCode.OK.name, "")


def _generate(**fields: str) -> bytes:
    return pb.GenerateRequest(query="tea", **fields).SerializeToString()


GRPC = {"content-type": "application/grpc", "te": "trailers"}


class Bad(NamedTuple):
    """A client's mistake: how it is sent (JSON, gRPC, or gRPC as raw HTTP/1.1 to control
    every header), the statuses it may get, and the name its message must start with."""

    what: str
    transport: str  # "json", "grpc" or "http1"
    path: str
    body: bytes
    headers: dict[str, str]
    statuses: frozenset[str]
    field: str = ""
    timeout: float | None = 60
    key: str = ""  # the client's own key when empty


def _bad(
    what: str,
    transport: str,
    path: str,
    body: bytes,
    status: str,
    field: str = "",
    headers: dict[str, str] | None = None,
    timeout: float | None = 60,
    key: str = "",
) -> Bad:
    statuses = frozenset(status.split("|"))
    return Bad(what, transport, path, body, headers or {}, statuses, field, timeout, key)


V1, SEARCH_PATH, GENERATE_PATH = "/v1/generate", f"{GATEWAY}/Search", f"{GATEWAY}/Generate"
TYPO = b'{"query":"tea","typo":1}'
FRAME = _frame(SEARCH)

# Twenty in a row, every kind of issue 13's part 5 and the guard's rules.
BAD_REQUESTS = [
    _bad("unknown tier", "json", V1, b'{"query":"tea","tier":"nope"}', "HTTP 400", "tier"),
    _bad("unknown tier", "grpc", GENERATE_PATH, _generate(tier="nope"), "INVALID_ARGUMENT", "tier"),
    _bad("malformed JSON", "json", V1, b'{"query":', "HTTP 400"),
    _bad("unknown JSON field", "json", V1, TYPO, "HTTP 400", "typo"),
    _bad(
        "unknown JSON field as gRPC-Web",
        "json",
        V1,
        TYPO,
        "HTTP 400",
        "typo",
        {"content-type": "application/grpc-web"},
    ),
    _bad(
        "JSON as application/grpc+json",
        "http1",
        SEARCH_PATH,
        TYPO,
        "INVALID_ARGUMENT",
        "content-type",
        {"content-type": "application/grpc+json"},
    ),
    _bad(
        "grpc-timeout: abc",
        "json",
        V1,
        b'{"query":"tea"}',
        "HTTP 400",
        "grpc-timeout",
        {"grpc-timeout": "abc"},
    ),
    # gRPC libraries drop a malformed grpc-timeout of their caller's; curl sends it.
    _bad(
        "grpc-timeout: abc",
        "http1",
        SEARCH_PATH,
        FRAME,
        "INVALID_ARGUMENT",
        "grpc-timeout",
        {**GRPC, "grpc-timeout": "abc"},
    ),
    _bad(
        "unknown grpc-encoding",
        "http1",
        SEARCH_PATH,
        FRAME,
        "INVALID_ARGUMENT",
        "grpc-encoding",
        {**GRPC, "grpc-encoding": "br"},
    ),
    _bad(
        "binary header not base64",
        "http1",
        SEARCH_PATH,
        FRAME,
        "INVALID_ARGUMENT",
        "x-trace-bin",
        {**GRPC, "x-trace-bin": "YWJ"},
    ),
    _bad(
        "a response header",
        "http1",
        SEARCH_PATH,
        FRAME,
        "INVALID_ARGUMENT",
        "grpc-status",
        {**GRPC, "grpc-status": "x"},
    ),
    _bad(
        "gRPC without te: trailers",
        "http1",
        SEARCH_PATH,
        FRAME,
        "INVALID_ARGUMENT",
        "te",
        {"content-type": "application/grpc"},
    ),
    _bad("gRPC without a message", "http1", SEARCH_PATH, b"", "INVALID_ARGUMENT", "body", GRPC),
    _bad(
        "gRPC message cut short",
        "http1",
        SEARCH_PATH,
        _frame(SEARCH, 99),
        "INVALID_ARGUMENT",
        "body",
        GRPC,
    ),
    _bad("unknown gRPC method", "grpc", f"{GATEWAY}/Nope", SEARCH, "UNIMPLEMENTED"),
    _bad(
        "undecodable protobuf",
        "grpc",
        SEARCH_PATH,
        b"\xff\xff\xff\xff",
        "INVALID_ARGUMENT|INTERNAL|UNKNOWN",
    ),
    _bad(
        "a deadline too short to serve",
        "grpc",
        SEARCH_PATH,
        SEARCH,
        "DEADLINE_EXCEEDED",
        timeout=0.001,
    ),
    _bad(
        "model_version 99",
        "json",
        V1,
        b'{"query":"tea","model_version":"99"}',
        "HTTP 404",
        "model_version",
    ),
    _bad(
        "model_version 99",
        "grpc",
        GENERATE_PATH,
        _generate(model_version="99"),
        "NOT_FOUND",
        "model_version",
    ),
    _bad("unknown API key", "json", V1, b'{"query":"tea"}', "HTTP 401", key="rmk-nobody"),
]


def _send_bad(mesh, channel: grpc.Channel, key: str, bad: Bad) -> Outcome:
    key = bad.key or key
    if bad.transport == "json":
        return _json(mesh, bad.path, bad.body, key, **bad.headers)
    if bad.transport == "http1":
        return _grpc_http1(mesh, bad.path, bad.body, key, **bad.headers)
    metadata = tuple(bad.headers.items())
    return _grpc(channel, bad.path, bad.body, key, metadata, bad.timeout)


def _stats(mesh) -> dict[str, int]:
    """The gateway cluster's counters and gauges from Envoy's admin /stats."""
    url = mesh.admin_url + "/stats?filter=" + urllib.parse.quote(r"^cluster\.gateway\.")
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = (re.fullmatch(r"(\S+): (\d+)", line) for line in text.splitlines())
    return {m[1]: int(m[2]) for m in found if m}


def _gateway_hosts(mesh) -> dict[str, str]:
    """Each gateway host of the edge's `gateway` cluster and its health flags (/clusters)."""
    with urllib.request.urlopen(mesh.admin_url + "/clusters", timeout=10) as response:
        text = response.read().decode()
    flags = (
        re.fullmatch(r"gateway::(\S+)::health_flags::(\S+)", line) for line in text.splitlines()
    )
    return {m[1]: m[2] for m in flags if m}


def test_client_mistakes_are_neither_retried_nor_ejecting(mesh, channel, demo_key, other_key):
    before, hosts = _stats(mesh), _gateway_hosts(mesh)
    gateway = f"127.0.0.1:{mesh.config.gateway.port}"
    assert hosts == {gateway: "healthy"}, hosts
    assert len(BAD_REQUESTS) == 20
    for bad in BAD_REQUESTS:
        outcome = _send_bad(mesh, channel, demo_key, bad)
        assert outcome.status in bad.statuses, (bad.what, bad.transport, outcome)
        assert outcome.message.startswith(bad.field), (bad.what, bad.transport, outcome)
    # A good request from another client, served by the same gateway.
    status, reply = _status(mesh, other_key)
    assert status == 200, reply
    assert reply["region"] == mesh.regions[0].name and reply["tenant"] == "other"
    after = _stats(mesh)
    assert {name: after[name] - before[name] for name in UNTOUCHED} == dict.fromkeys(UNTOUCHED, 0)
    assert after["cluster.gateway.outlier_detection.ejections_active"] == 0
    assert _gateway_hosts(mesh) == {gateway: "healthy"}


def _status(mesh, key: str) -> tuple[int, dict]:
    reply = _send(mesh, "/v1/status", b"", {"x-api-key": key}, method="GET")
    return reply.status, json.loads(reply.body)


# What the guard lets through, the gateway's gRPC core must serve: the two agree.
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("grpc-timeout", "30S"),
        ("grpc-timeout", "99999999m"),
        ("grpc-timeout", "45000000u"),
        ("grpc-encoding", "identity"),
        ("grpc-encoding", "gzip"),
        ("grpc-encoding", "deflate"),
        ("grpc-previous-rpc-attempts", "0"),
        ("x-trace-bin", "YQ"),
        ("x-trace-bin", "YQ=="),
        ("x-trace-bin", "YWI="),
        ("grpc-trace-bin", "YWJj"),  # the gateway's core refuses this one: removed at the edge
        ("grpc-tags-bin", "YWJj"),
    ],
)
def test_headers_the_guard_passes_are_served(mesh, demo_key, name, value):
    reply = _send(
        mesh, f"{GATEWAY}/Search", _frame(SEARCH), {"x-api-key": demo_key, **GRPC, name: value}
    )
    assert reply.status == 200 and "grpc-status" not in reply.headers, reply  # not trailers-only
    assert reply.body.startswith(b"\x00"), reply  # one uncompressed SearchResponse


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/grpc-web",
        None,
    ],
)
def test_json_is_served_under_every_content_type_the_transcoder_takes(mesh, demo_key, content_type):
    headers = {"x-api-key": demo_key}
    if content_type is not None:
        headers["content-type"] = content_type
    reply = _send(mesh, "/v1/search", b'{"query":"tea","top_k":2}', headers)
    assert reply.status == 200, reply
    assert "hits" in json.loads(reply.body)
