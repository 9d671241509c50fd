"""A model instance that dies: the gateway stands in another tier or fails fast, never hangs;
the model comes back; a Triton that crashes is started again; a stream cut after its first
token, whatever cuts it, ends with an error event, never as if the answer were whole."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from services.config.mesh import MeshConfig
from services.config.regions import first
from services.supervisor import up
from services.supervisor.launcher import ROOT, TRITON_CRASHED, Mesh, isolated

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_mesh(tmp_path_factory: pytest.TempPathFactory):
    """A mesh of its own: this module kills parts of it. Its standard model has no loop
    stop, so a story goes on until max_tokens: the streams cut here must outlast the
    gateway's drain, and SmolLM2 makes a long answer only by going round."""
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    models = tmp_path_factory.mktemp("models") / "cpu"
    shutil.copytree(ROOT / base.triton.model_repository, models, ignore=_CACHES)
    config = models / "standard" / "config.pbtxt"
    text = config.read_text()
    loop_stop = re.compile(r'(key: "loop_ngram"\s*value: \{ string_value: )"\d+"')
    assert loop_stop.search(text), "the standard model's loop_ngram parameter moved"
    config.write_text(loop_stop.sub(r'\1"0"', text))
    base = dataclasses.replace(
        base, triton=dataclasses.replace(base.triton, model_repository=str(models))
    )
    with Mesh(isolated(base, tmp_path_factory.mktemp("f"))) as mesh:
        yield mesh


_CACHES = shutil.ignore_patterns("__pycache__")


def _stubs(triton_pid: int, model: str) -> list[int]:
    """Python-backend stub processes under Triton serving `model`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(
            next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1]
        )
        if (
            ppid == triton_pid
            and "triton_python_backend_stub" in cmdline
            and f"/{model}/" in cmdline
        ):
            found.append(int(proc.name))
    return found


def _ask(stub, key: str, tier: str) -> pb.GenerateResponse:
    return stub.Generate(
        pb.GenerateRequest(query="anything at all?", tier=tier, max_tokens=8, bypass_cache=True),
        metadata=(("x-api-key", key),),
        timeout=30,
    )


def _kill_stubs(mesh: Mesh, model: str) -> None:
    stubs = _stubs(mesh.processes["triton-local"].pid, model)
    assert stubs, f"no stub process found for {model}"
    for pid in stubs:
        os.kill(pid, signal.SIGKILL)


def _until_served_by(mesh: Mesh, stub, key: str, tier: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if _ask(stub, key, tier).tier == tier:
                return
        except grpc.RpcError as exc:
            _unless_triton_aborted(mesh)
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        assert time.monotonic() < deadline, "Triton did not bring the model back"
        time.sleep(1)


def _unless_triton_aborted(mesh: Mesh) -> None:
    """Triton's python backend sometimes aborts the whole server when a stub dies holding
    their shared IPC lock (`boost::interprocess::lock_exception`, a known bug:
    triton-inference-server/server#8882). That is not the behaviour under test: restart
    Triton for the tests after this one and report this one as an expected failure."""
    triton = mesh.processes["triton-local"]
    if not triton.failed():
        return
    aborted = "lock_exception" in triton.log_path.read_text(errors="replace")
    mesh.restart("triton-local")
    if not aborted:
        pytest.fail("Triton exited after a stub was killed")
    pytest.xfail("Triton aborted on a dead stub's IPC lock (triton-inference-server#8882)")


def test_a_triton_that_crashes_has_failed_and_make_up_starts_it_again(own_mesh):
    """Triton's own crash handler (a SIGSEGV here, as in CI's server#8034 crash) says so in
    the line Process.failed watches for; `make up`'s loop then starts Triton again."""
    triton = own_mesh.processes["triton-local"]
    os.kill(triton.pid, signal.SIGSEGV)
    deadline = time.monotonic() + 10
    while not triton.failed():
        assert time.monotonic() < deadline, "the crash went unnoticed"
        time.sleep(0.05)
    assert TRITON_CRASHED.search(triton.log_tail(200))
    assert up._dead(own_mesh, Counter()) == []
    assert own_mesh.processes["triton-local"] is not triton
    with grpc.insecure_channel(own_mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        _until_served_by(own_mesh, stub, own_mesh.config.mesh.demo_key, "standard")


@pytest.mark.parametrize("tier", ["economy", "standard"])
def test_killed_stub_fails_fast_then_recovers(own_mesh, tier):
    key = own_mesh.config.mesh.demo_key
    with grpc.insecure_channel(own_mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        assert _ask(stub, key, tier).tier == tier
        _kill_stubs(own_mesh, tier)
        started = time.monotonic()
        detail = ""
        try:
            reply = _ask(stub, key, tier)
            outcome = reply.tier
        except grpc.RpcError as exc:
            _unless_triton_aborted(own_mesh)
            outcome, detail = exc.code().name, exc.details()
        # economy has no stand-in; standard has economy, marked degraded.
        assert outcome in (
            {"economy", "UNAVAILABLE"} if tier == "economy" else {"standard", "economy"}
        ), detail
        if outcome == "economy" and tier == "standard":
            assert reply.degraded_reason == "tier standard unavailable: answered by economy"
        assert time.monotonic() - started < 10, "a dead model instance must not hang the request"
        _until_served_by(own_mesh, stub, key, tier)


LONG = pb.GenerateRequest(
    query="List one hundred different fruits, one per line, with a sentence about each.",
    tier="standard",
    max_tokens=1024,
    bypass_cache=True,
)


def test_a_grpc_stream_cut_after_its_first_token_ends_with_an_error(own_mesh):
    key = own_mesh.config.mesh.demo_key
    with grpc.insecure_channel(own_mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        _until_served_by(own_mesh, stub, key, "standard")
        stream = stub.GenerateStream(LONG, metadata=(("x-api-key", key),), timeout=120)
        events = []
        with pytest.raises(grpc.RpcError) as err:
            for event in stream:
                assert not event.HasField("final"), "the stream ended cleanly"
                events.append(event)
                if len(events) == 1:
                    _kill_stubs(own_mesh, "standard")
        assert events[0].token
        assert events[-1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "generation failed after it started" in err.value.details()
        _until_served_by(own_mesh, stub, key, "standard")


def test_an_http_stream_cut_after_its_first_token_ends_with_an_error(own_mesh):
    key = own_mesh.config.mesh.demo_key
    with grpc.insecure_channel(own_mesh.edge_target) as channel:
        _until_served_by(own_mesh, gateway_pb2_grpc.GatewayStub(channel), key, "standard")
    body = json.dumps(json_format.MessageToDict(LONG, preserving_proto_field_name=True))
    request = urllib.request.Request(
        f"{own_mesh.http_url}/v1/generate:stream",
        data=body.encode(),
        headers={"content-type": "application/json", "x-api-key": key},
    )
    lines = []
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            lines.append(json.loads(raw))
            if len(lines) == 1:
                _kill_stubs(own_mesh, "standard")
    assert "token" in lines[0]
    assert not any("final" in line for line in lines), "the stream ended cleanly"
    error = lines[-1]["error"]
    assert error["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "generation failed after it started" in error["message"]


# A stream long enough to be cut: SmolLM2 writes all 1,024 tokens (about 13 s) of it.
STREAM = pb.GenerateRequest(
    query="Write a very long story about a dragon, with many chapters.",
    tier="standard",
    max_tokens=1024,
    bypass_cache=True,
    skip_retrieval=True,
)


def _grpc_stream(mesh: Mesh, timeout_s: float, on_first_token) -> tuple[list[dict], str]:
    """The events of a gRPC stream through Envoy, as JSON dicts, and the status it ended with."""
    events: list[dict] = []
    code = "OK"
    with grpc.insecure_channel(mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        metadata = (("x-api-key", mesh.config.mesh.demo_key),)
        try:
            for event in stub.GenerateStream(STREAM, metadata=metadata, timeout=timeout_s):
                events.append(json_format.MessageToDict(event, preserving_proto_field_name=True))
                if len(events) == 1:
                    on_first_token()
        except grpc.RpcError as exc:
            code = exc.code().name
    return events, code


def _http_stream(mesh: Mesh, timeout_s: float, on_first_token) -> tuple[list[dict], str]:
    """The lines of an HTTP/JSON stream through Envoy, and how the body ended."""
    body = json.dumps(json_format.MessageToDict(STREAM, preserving_proto_field_name=True))
    headers = {
        "content-type": "application/json",
        "x-api-key": mesh.config.mesh.demo_key,
        "grpc-timeout": f"{round(timeout_s * 1000)}m",
    }
    request = urllib.request.Request(
        f"{mesh.http_url}/v1/generate:stream", data=body.encode(), headers=headers
    )
    return _read(request, timeout_s, on_first_token, b"\n", json.loads)


def _openai_stream(mesh: Mesh, timeout_s: float, on_first_token) -> tuple[list[dict], str]:
    """The events of an OpenAI chat completions stream through Envoy, in the shape of the
    native stream's (token, final, error with its gRPC code), and how the body ended."""
    body = {
        "model": STREAM.tier,
        "messages": [{"role": "user", "content": STREAM.query}],
        "max_tokens": STREAM.max_tokens,
        "stream": True,
        "bypass_cache": True,
        "skip_retrieval": True,
    }
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {mesh.config.mesh.demo_key}",
    }
    request = urllib.request.Request(
        f"{mesh.http_url}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers
    )
    return _read(request, timeout_s, on_first_token, b"\n\n", _native_shape)


def _read(request, timeout_s: float, on_first_token, end: bytes, parse) -> tuple[list, str]:
    """A streamed body's events (each ends with `end`, read by `parse`), and how the body
    ended: "whole" or the error that cut it. Read with read1: http.client's line iterator
    takes a chunked body cut short for its end (its peek swallows IncompleteRead), curl
    does not (exit code 18)."""
    events: list = []
    pending = b""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s + 30) as response:
            while chunk := response.read1(65536):
                *complete, pending = (pending + chunk).split(end)
                for raw in filter(None, complete):
                    events.append(parse(raw))
                    if len(events) == 1:
                        on_first_token()
    except http.client.IncompleteRead as exc:
        return events, type(exc).__name__
    return events, "whole"


def _native_shape(raw: bytes) -> dict:
    data = raw.decode().removeprefix("data: ")
    if data == "[DONE]":
        return {"done": True}
    event = json.loads(data)
    if "error" in event:
        code = grpc.StatusCode[event["error"]["code"].upper()].value[0]
        return {"error": {"code": code, "message": event["error"]["message"]}}
    if event["choices"] and event["choices"][0]["finish_reason"]:
        return {"final": event}
    return {"token": event["choices"][0]["delta"].get("content", "")}


def _sigterm(mesh: Mesh, name: str) -> None:
    os.kill(mesh.processes[name].pid, signal.SIGTERM)


# How a stream may end after its first token, what ends it, and the status its last event
# carries; in each case the stream ends with that error event, never silently.
ENDINGS = {
    "deadline": (2.0, lambda mesh: None, grpc.StatusCode.DEADLINE_EXCEEDED),
    "triton-lost": (120.0, lambda mesh: mesh.kill("triton-local"), grpc.StatusCode.UNAVAILABLE),
    "gateway-shutdown": (
        120.0,
        lambda mesh: _sigterm(mesh, "gateway-local"),
        grpc.StatusCode.UNAVAILABLE,
    ),
}


READERS = {"grpc": _grpc_stream, "http": _http_stream, "openai": _openai_stream}


# An OpenAI client sets no deadline the gateway can see: its own timeout closes the request.
CUTS = [(e, p) for e in ENDINGS for p in READERS if (e, p) != ("deadline", "openai")]


@pytest.mark.parametrize(("ending", "protocol"), CUTS)
def test_a_stream_cut_after_its_first_token_ends_with_its_error(own_mesh, ending, protocol):
    timeout_s, cut, status = ENDINGS[ending]
    key = own_mesh.config.mesh.demo_key
    with grpc.insecure_channel(own_mesh.edge_target) as channel:
        _until_served_by(own_mesh, gateway_pb2_grpc.GatewayStub(channel), key, "standard")
    read = READERS[protocol]
    try:
        events, ended = read(own_mesh, timeout_s, lambda: cut(own_mesh))
    finally:
        if ending == "gateway-shutdown":
            own_mesh.processes["gateway-local"].wait(30)  # it drains, then exits
        for name in ("triton-local", "gateway-local"):
            if own_mesh.processes[name].failed():
                own_mesh.restart(name)
    assert "token" in events[0]
    assert not any("final" in e for e in events), "the stream ended as if the answer were whole"
    assert events[-1]["error"]["code"] == status.value[0], events[-1]
    assert ended == (status.name if protocol == "grpc" else "whole")


@pytest.mark.parametrize("protocol", ["grpc", "http", "openai"])
def test_a_stream_whose_gateway_dies_ends_with_a_transport_error(own_mesh, protocol):
    """No process can say how its own death ended a stream: the client sees the transport cut
    it (a gRPC status, an HTTP body without its last chunk), never a clean end."""
    key = own_mesh.config.mesh.demo_key
    with grpc.insecure_channel(own_mesh.edge_target) as channel:
        _until_served_by(own_mesh, gateway_pb2_grpc.GatewayStub(channel), key, "standard")
    read = READERS[protocol]
    try:
        events, ended = read(own_mesh, 120.0, lambda: own_mesh.kill("gateway-local"))
    finally:
        own_mesh.restart("gateway-local")
    assert "token" in events[0]
    assert not any("final" in e for e in events)
    assert ended in ({"UNAVAILABLE", "INTERNAL"} if protocol == "grpc" else {"IncompleteRead"})
