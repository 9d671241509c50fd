"""Envoy's request guard refuses what a request itself gets wrong, before any upstream.

Starts its own Envoy on free ports with no gateway behind it: a request that passes the guard
reaches the router and gets 503 (no upstream; UNAVAILABLE for gRPC), one that fails it gets
the guard's INVALID_ARGUMENT: 400 with a JSON status for JSON, gRPC's trailers-only answer
(grpc-status 3) for gRPC. The guard tells the two apart by Envoy's own rule, the transcoder's:
a JSON body under any content type the transcoder transcodes goes through the unknown-field
check (issue 13, part 6).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from services.config.mesh import MeshConfig
from services.edge.render import render

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = ROOT / "build" / "gen" / "ragmesh.pb"

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert DESCRIPTOR_SET.is_file(), "build/gen/ragmesh.pb is missing: run `make install`"
    envoy = Path(sys.executable).parent / "envoy"
    base = MeshConfig.load(ROOT / "config" / "mesh.yaml")
    listen, internal, admin, gateway = (_free_port() for _ in range(4))
    edge = dataclasses.replace(
        base.edge, listen_port=listen, internal_port=internal, admin_port=admin
    )
    config = dataclasses.replace(
        base, edge=edge, gateway=dataclasses.replace(base.gateway, port=gateway)
    )
    folder = tmp_path_factory.mktemp("edge")
    out = folder / "envoy.yaml"
    out.write_text(yaml.safe_dump(render(config, descriptor_set=DESCRIPTOR_SET)), encoding="utf-8")
    log = (folder / "envoy.log").open("wb")
    process = subprocess.Popen(
        [str(envoy), "-c", str(out), "--use-dynamic-base-id", "--log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (folder / "envoy.log").read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "envoy did not become ready"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{listen}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _post(url: str, body: bytes | str, content_type: str = "application/json") -> tuple[int, str]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"content-type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _unknown(status: int, body: str) -> str | None:
    """The message of the filter's 400, or None for any other answer."""
    if status != 400:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    message = parsed.get("message", "") if isinstance(parsed, dict) else ""
    return message if parsed.get("code") == 3 and message.endswith("unknown field") else None


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/generate", '{"query":"x","bogus":1}', "bogus"),
        ("/v1/generate:stream", '{"query":"x","bogus":1}', "bogus"),
        ("/v1/search", '{"query":"x","topk":1}', "topk"),
        ("/v1/documents", '{"documents":[{"id":"a","bogus":1}]}', "documents[0].bogus"),
        ("/v1/documents", '{"documents":[{"id":"a"},{"id":"b","x":{}}]}', "documents[1].x"),
        ("/v1/generate", '{"query":"x","\\u0062ogus":1}', "bogus"),
        ("/v1/generate?alt=json", '{"bogus":1}', "bogus"),
        ("/v1/generate/", '{"bogus":1}', "bogus"),
        # What the transcoder's parser reads beyond strict JSON is checked too.
        ("/v1/generate", '{query:"x",bogus:1}', "bogus"),
        ("/v1/generate", "{'query':'x','bogus':1}", "bogus"),
        ("/v1/generate", '{"query":"x","bogus":1,}', "bogus"),
    ],
)
def test_unknown_fields_get_400_naming_them(
    edge_url: str, path: str, body: str, field: str
) -> None:
    status, text = _post(edge_url + path, body)
    assert _unknown(status, text) == f"{field}: unknown field", (status, text)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/generate", '{"query":"x","top_k":2,"maxTokens":5,"filters":{"any key":"v"}}'),
        ("/v1/generate", '{"query":"x","topK":2}'),
        ("/v1/search", '{"query":"x","filters":{"lang":"en","other":"v"}}'),
        ("/v1/documents", '{"documents":[{"id":"a","text":"t","metadata":{"k":"v","x y":"z"}}]}'),
        ("/v1/documents", '{"documents":[null]}'),
    ],
)
def test_known_fields_and_map_keys_pass(edge_url: str, path: str, body: str) -> None:
    status, text = _post(edge_url + path, body)
    assert _unknown(status, text) is None, (status, text)
    assert status == 503, (status, text)  # reached the router: no gateway behind this Envoy


def test_malformed_json_is_the_transcoders_400(edge_url: str) -> None:
    status, text = _post(edge_url + "/v1/generate", '{"bogus":1,')
    assert status == 400
    assert _unknown(status, text) is None, text


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def _send(url: str, body: bytes, headers: dict[str, Any], method: str = "POST") -> Reply:
    """One HTTP/1.1 request with exactly `headers` (urllib would add a content type)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, parts.path, body=body, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


# Content types the transcoder transcodes as JSON: all but "application/grpc" and
# "application/grpc+...", exactly so, case-sensitive (Envoy's Grpc::Common::hasGrpcContentType).
JSON_CONTENT_TYPES = [
    "application/json",
    "application/grpc-web",
    "application/grpc-web+proto",
    "Application/GRPC",
    "APPLICATION/GRPC+PROTO",
    "application/grpcx",
    "application/grpc; charset=utf-8",
    "application/grpc;proto",
    "text/plain",
    "application/x-www-form-urlencoded",  # what plain `curl -d` sends
    "",
    None,  # no content type at all
]


@pytest.mark.parametrize("content_type", JSON_CONTENT_TYPES)
def test_every_json_content_type_gets_the_unknown_field_check(
    edge_url: str, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    reply = _send(edge_url + "/v1/search", b'{"query":"x","typo":1}', headers)
    assert _unknown(reply.status, reply.body.decode()) == "typo: unknown field", reply
    reply = _send(edge_url + "/v1/search", b'{"query":"x","top_k":2}', headers)
    assert reply.status == 503, reply  # reached the router: no gateway behind this Envoy


def _frame(message: bytes, flag: int = 0, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message: compressed-flag, 4-byte big-endian length, message."""
    return bytes([flag]) + struct.pack(">I", len(message) if length is None else length) + message


SEARCH = "/ragmesh.v1.Gateway/Search"
SEARCH_MESSAGE = b"\x0a\x01x"  # SearchRequest(query="x")
GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}


def _grpc(edge_url: str, body: bytes, headers: dict[str, str], path: str = SEARCH) -> Reply:
    return _send(edge_url + path, body, headers)


def _refused(reply: Reply) -> str | None:
    """The guard's message for a gRPC request it refused (INVALID_ARGUMENT), or None."""
    if reply.status != 200 or reply.headers.get("grpc-status") != "3":
        return None
    return urllib.parse.unquote(reply.headers.get("grpc-message", ""))


def _passed(reply: Reply) -> bool:
    """A gRPC request that reached the router: UNAVAILABLE, as no gateway is behind it."""
    return reply.status == 200 and reply.headers.get("grpc-status") == "14"


@pytest.mark.parametrize("content_type", ["application/grpc", "application/grpc+proto"])
def test_grpc_protobuf_content_types_pass(edge_url: str, content_type: str) -> None:
    headers = {**GRPC_HEADERS, "content-type": content_type}
    reply = _grpc(edge_url, _frame(SEARCH_MESSAGE), headers)
    assert _passed(reply), reply


@pytest.mark.parametrize(
    "content_type",
    [
        "application/grpc+json",
        "application/grpc+",
        "application/grpc+PROTO",
        "application/grpc+proto; charset=utf-8",
        "application/grpc+thrift",
    ],
)
def test_other_grpc_content_types_are_refused_naming_content_type(
    edge_url: str, content_type: str
) -> None:
    # A JSON body sent as gRPC (issue 13, part 5): it must not reach a gateway.
    headers = {**GRPC_HEADERS, "content-type": content_type}
    reply = _grpc(edge_url, b'{"query":"x","typo":1}', headers)
    message = _refused(reply)
    assert message is not None and message.startswith("content-type: "), reply
    assert content_type in message and "application/grpc+proto" in message


def test_grpc_without_te_trailers_is_refused(edge_url: str) -> None:
    reply = _grpc(edge_url, _frame(SEARCH_MESSAGE), {"content-type": "application/grpc"})
    message = _refused(reply)
    assert message is not None and message.startswith("te: "), reply


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"", {}),  # no message at all
        (b"\x00\x00\x00", {}),  # a cut prefix
        (_frame(SEARCH_MESSAGE, length=99), {}),  # a cut message
        (_frame(SEARCH_MESSAGE) + b"\x00", {}),  # a second, cut prefix
        (_frame(SEARCH_MESSAGE) * 2, {}),  # two messages to a unary method
        (_frame(SEARCH_MESSAGE, flag=2), {}),  # no such compressed-flag
        (_frame(SEARCH_MESSAGE, flag=1), {}),  # compressed, but no grpc-encoding
        (_frame(SEARCH_MESSAGE, flag=1), {"grpc-encoding": "identity"}),
        (b'{"query":"x"}', {}),  # JSON sent as gRPC
    ],
)
def test_malformed_grpc_bodies_are_refused(
    edge_url: str, body: bytes, headers: dict[str, str]
) -> None:
    # The gateway's gRPC core waits for the rest of a cut message until the deadline.
    message = _refused(_grpc(edge_url, body, {**GRPC_HEADERS, **headers}))
    assert message is not None and message.startswith("body: "), message


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (SEARCH, _frame(SEARCH_MESSAGE), {}),
        (SEARCH, _frame(SEARCH_MESSAGE, flag=1), {"grpc-encoding": "gzip"}),
        ("/ragmesh.v1.Gateway/GetStatus", _frame(b""), {}),  # an empty message: zero bytes
        # Not a method of the public services: framing only, any number of messages.
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", _frame(b"") * 2, {}),
    ],
)
def test_well_formed_grpc_bodies_pass(
    edge_url: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    reply = _grpc(edge_url, body, {**GRPC_HEADERS, **headers}, path)
    assert _passed(reply), reply


# Request headers the gateway's gRPC core fails on with INTERNAL when malformed: the guard
# refuses them for gRPC and JSON requests alike, naming the header.
MALFORMED_HEADERS = [
    ("grpc-timeout", "abc"),
    ("grpc-timeout", "5s"),  # units are case-sensitive: S is seconds, m milliseconds
    ("grpc-timeout", "123456789S"),  # at most 8 digits
    ("grpc-timeout", "1.5S"),
    ("grpc-timeout", "S"),
    ("grpc-timeout", ""),
    ("grpc-encoding", "bogus"),
    ("grpc-encoding", "GZIP"),
    ("grpc-encoding", ""),
    ("grpc-previous-rpc-attempts", "-1"),
    ("x-trace-bin", "YWJ"),  # the last character's spare bits are not zero
    ("x-trace-bin", "Y"),
    ("x-trace-bin", "YW-_"),  # URL-safe alphabet
    ("x-trace-bin", "YQ="),
    ("x-trace-bin", ""),
    ("grpc-status", "0"),  # response-only headers
    ("grpc-message", "x"),
    ("grpc-status-details-bin", "YQ"),
    ("grpc-retry-pushback-ms", "1"),
    ("grpc-internal-encoding-request", "gzip"),
    ("grpclb_client_stats", "x"),
    ("lb-cost-bin", "YQ"),
]

WELL_FORMED_HEADERS = [
    ("grpc-timeout", "30S"),
    ("grpc-timeout", "99999999m"),
    ("grpc-timeout", "1H"),
    ("grpc-encoding", "identity"),
    ("grpc-encoding", "gzip"),
    ("grpc-encoding", "deflate"),
    ("grpc-previous-rpc-attempts", "2"),
    ("x-trace-bin", "YQ"),
    ("x-trace-bin", "YQ=="),
    ("x-trace-bin", "YWI="),
    ("x-trace-bin", "YWJj"),
    ("grpc-trace-bin", "YWJj"),  # OpenCensus context: removed, never refused
]


@pytest.mark.parametrize(("name", "value"), MALFORMED_HEADERS)
def test_malformed_headers_are_refused_naming_them(edge_url: str, name: str, value: str) -> None:
    message = _refused(_grpc(edge_url, _frame(SEARCH_MESSAGE), {**GRPC_HEADERS, name: value}))
    assert message is not None and message.startswith(f"{name}: "), message
    json_headers = {"content-type": "application/json", name: value}
    reply = _send(edge_url + "/v1/search", b'{"query":"x"}', json_headers)
    assert reply.status == 400, reply
    assert json.loads(reply.body)["message"].startswith(f"{name}: "), reply
    reply = _send(edge_url + "/v1/status", b"", {name: value}, method="GET")  # no body
    assert reply.status == 400, reply


@pytest.mark.parametrize(("name", "value"), WELL_FORMED_HEADERS)
def test_well_formed_headers_pass(edge_url: str, name: str, value: str) -> None:
    reply = _grpc(edge_url, _frame(SEARCH_MESSAGE), {**GRPC_HEADERS, name: value})
    assert _passed(reply), reply
    json_headers = {"content-type": "application/json", name: value}
    reply = _send(edge_url + "/v1/search", b'{"query":"x"}', json_headers)
    assert reply.status == 503, reply


@pytest.mark.parametrize("name", ["authorization", "x-api-key", "x-note"])
def test_a_header_that_is_not_utf8_is_refused_and_never_echoed(edge_url: str, name: str) -> None:
    """The gateway's gRPC core would log such a value whole (a key in clear): the edge
    refuses it, naming the header and not its value. UTF-8 text beyond ASCII passes."""
    headers: dict[str, Any] = {"content-type": "application/json"}
    reply = _send(edge_url + "/v1/search", b'{"query":"x"}', {**headers, name: SECRET})
    assert reply.status == 400, reply
    assert json.loads(reply.body)["message"] == f"{name}: its value must be UTF-8 text"
    assert b"rmk-secret" not in reply.body
    fine = _send(edge_url + "/v1/search", b'{"query":"x"}', {**headers, name: "café".encode()})
    assert fine.status == 503, fine  # through the guard, to the missing upstream


SECRET = b"Bearer rmk-secret-key\xe9"  # Latin-1 e-acute: not UTF-8
