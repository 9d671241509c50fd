"""The load generators nobody here can run in CI stay valid: every ghz config in
loadtest/ghz/ (ghz is not installed) and the locustfile (locust has a venv of its own)
name real methods of the public API and send messages it parses."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from ragmesh.v1 import gateway_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
GHZ_CONFIGS = sorted((ROOT / "loadtest" / "ghz").glob("*.json"))
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
SERVICE = pb.DESCRIPTOR.services_by_name["Gateway"]
# The JSON names of ghz's run options (runner.Config in bojand/ghz).
GHZ_OPTIONS = {
    "proto", "protoset", "call", "cacert", "cert", "key", "skipTLS", "skipFirst", "cname",
    "authority", "insecure", "total", "async", "concurrency", "concurrency-schedule",
    "concurrency-start", "concurrency-end", "concurrency-step", "concurrency-step-duration",
    "concurrency-max-duration", "connections", "rps", "duration", "duration-stop",
    "max-duration", "timeout", "data", "data-file", "binary-file", "metadata",
    "metadata-file", "stream-interval", "output", "format", "connect-timeout", "keepalive",
    "cpus", "import-paths", "name", "tags", "reflect-metadata", "debug", "host",
    "enable-compression", "load-schedule", "load-start", "load-end", "load-step",
    "load-step-duration", "load-max-duration",
}  # fmt: skip
DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")  # Go's time.ParseDuration


def _method(call: str):
    """ghz's `package.Service.Method` or `package.Service/Method`, as a method descriptor."""
    service, _, method = call.replace("/", ".").rpartition(".")
    assert service == SERVICE.full_name, f"{call}: not a method of {SERVICE.full_name}"
    assert method in SERVICE.methods_by_name, f"{call}: {SERVICE.full_name} has no {method}"
    return SERVICE.methods_by_name[method]


def _imports(proto: Path) -> list[str]:
    return re.findall(r'^import\s+(?:public\s+)?"([^"]+)";', proto.read_text(), re.M)


@pytest.fixture(params=GHZ_CONFIGS, ids=lambda p: p.name)
def ghz(request) -> dict:
    return json.loads(request.param.read_text())


def test_there_are_ghz_configs():
    names = {_method(json.loads(p.read_text())["call"]).name for p in GHZ_CONFIGS}
    assert {"Generate", "GenerateStream", "Search"} <= names


def test_ghz_config_has_only_ghz_options(ghz):
    assert set(ghz) <= GHZ_OPTIONS, f"not ghz options: {sorted(set(ghz) - GHZ_OPTIONS)}"
    assert ghz["host"] == "127.0.0.1:8080" and ghz["insecure"] is True
    assert ("total" in ghz) or ("duration" in ghz), "unbounded: neither total nor duration"
    for option in ("duration", "timeout", "max-duration", "stream-interval"):
        if option in ghz:
            assert DURATION.match(ghz[option]), f"{option}: {ghz[option]!r} is no Go duration"
    for option in ("total", "concurrency", "connections", "rps"):
        if option in ghz:
            assert isinstance(ghz[option], int) and ghz[option] > 0, option
    assert ghz.get("concurrency", 50) <= ghz.get("total", ghz.get("concurrency", 50))


def test_ghz_data_parses_as_the_request(ghz):
    request_class = GetMessageClass(_method(ghz["call"]).input_type)
    messages = ghz["data"] if isinstance(ghz["data"], list) else [ghz["data"]]
    assert messages, "data is empty"
    for data in messages:
        message: Message = json_format.ParseDict(data, request_class())
        assert message.query, f"{data}: no query"


def test_ghz_metadata_has_an_api_key(ghz):
    metadata = {k.lower(): v for k, v in ghz["metadata"].items()}
    assert metadata.get("x-api-key") or metadata.get("authorization", "").startswith("Bearer ")


def test_ghz_proto_and_its_imports_resolve(ghz):
    """As ghz parses it from the repository root: every import in an import path, except
    google/protobuf's, which ghz has built in."""
    assert (ROOT / ghz["proto"]).is_file(), ghz["proto"]
    paths = [ROOT / p for p in ghz["import-paths"]]
    for path in paths:
        assert path.is_dir(), f"import path {path} is missing (`make install` makes the venv)"
    pending, seen = [ghz["proto"].removeprefix("protos/")], set()
    while pending:
        name = pending.pop()
        if name in seen or name.startswith("google/protobuf/"):
            continue
        seen.add(name)
        found = [p / name for p in paths if (p / name).is_file()]
        assert found, f"{name}: in no import path of {ghz['import-paths']}"
        pending.extend(_imports(found[0]))


def _locust_calls() -> tuple[set[str], set[str]]:
    """Methods the locustfile calls on its stub (`self._stub.X`) and messages it builds."""
    tree = ast.parse(LOCUSTFILE.read_text(), str(LOCUSTFILE))
    methods, messages = set(), set()
    for node in ast.walk(tree):
        match node:
            case ast.Attribute(value=ast.Attribute(attr="_stub"), attr=method):
                methods.add(method)
            case ast.Call(func=ast.Attribute(value=ast.Name(id="pb"), attr=message)):
                messages.add(message)
    return methods, messages


def test_locustfile_calls_methods_of_the_gateway():
    compile(LOCUSTFILE.read_text(), str(LOCUSTFILE), "exec")
    methods, messages = _locust_calls()
    assert {"Generate", "Search"} <= methods
    assert methods <= set(SERVICE.methods_by_name), sorted(methods - set(SERVICE.methods_by_name))
    inputs = {SERVICE.methods_by_name[m].input_type.name for m in methods}
    assert messages <= set(pb.DESCRIPTOR.message_types_by_name), sorted(messages)
    assert inputs <= messages, f"requests never built: {sorted(inputs - messages)}"
