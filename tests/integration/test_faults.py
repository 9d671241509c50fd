"""A model instance that dies: Triton restarts it or the gateway fails fast, never hangs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from services.mesh.config import MeshConfig
from services.mesh.launcher import ROOT, Mesh, isolated

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_mesh(tmp_path_factory: pytest.TempPathFactory):
    """A mesh of its own: this module kills parts of it."""
    config = isolated(MeshConfig.load(ROOT / "config" / "mesh.yaml"), tmp_path_factory.mktemp("f"))
    with Mesh(config) as mesh:
        yield mesh


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
        pb.GenerateRequest(query="anything at all?", tier=tier, max_tokens=8),
        metadata=(("x-api-key", key),),
        timeout=30,
    )


@pytest.mark.parametrize("tier", ["economy", "standard"])
def test_killed_stub_fails_fast_then_recovers(own_mesh, tier):
    triton = next(p for p in own_mesh.processes if p.name == "triton")
    key = own_mesh.config.mesh.demo_key
    with grpc.insecure_channel(own_mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        assert _ask(stub, key, tier).tier == tier
        stubs = _stubs(triton.pid, tier)
        assert stubs, f"no stub process found for {tier}"
        for pid in stubs:
            os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        try:
            outcome = _ask(stub, key, tier).tier
        except grpc.RpcError as exc:
            outcome = exc.code().name
        assert outcome in (tier, "UNAVAILABLE"), outcome
        assert time.monotonic() - started < 10, "a dead model instance must not hang the request"
        deadline = time.monotonic() + 60
        while True:
            try:
                assert _ask(stub, key, tier).tier == tier
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                assert time.monotonic() < deadline, "Triton did not bring the model back"
                time.sleep(1)
