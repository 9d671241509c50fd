"""Envoy's public listener answers 400 for unknown JSON body fields, before any upstream.

Starts its own Envoy on free ports with no gateway behind it: a body that passes the check
reaches the router and gets 503 (no upstream), one that fails it gets the Lua filter's 400.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from edge.render import render

from services.mesh.config import MeshConfig

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


def test_grpc_requests_are_not_read(edge_url: str) -> None:
    # Not a valid gRPC frame at all: the filter must leave it alone, whatever the router says.
    status, text = _post(
        edge_url + "/ragmesh.v1.Gateway/Generate", b'{"bogus":1}', "application/grpc"
    )
    assert _unknown(status, text) is None, (status, text)
