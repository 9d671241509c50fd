"""`ragmesh release` on a running two-region mesh under steady open-loop load through the
edge: a healthy canary is promoted through every ring, one that fails its searches is rolled
back at ring 0, and Ctrl-C rolls back too; the clients see no failure beyond the gate's
budget. On the session's event loop (not asyncio.run's: tests/integration/test_gameday.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.openloop import Load, Reply, Sample, Send, steady
from services.config.mesh import MeshConfig
from services.edge.render import CANARY_ALL_REGIONS, CANARY_PERCENT
from services.supervisor.launcher import ROOT, Mesh, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 20.0  # searches a second through the edge: cheap, loopback only
MAX_LOAD_S = 150.0  # the load stops with the release, or at this bound
# Short rings: at 20 % of 20 a second, ring 0's canary serves about 4 searches a second.
RINGS = {"ring0_percent": 20, "bake_s": 3.0, "min_requests": 5, "max_bake_s": 20.0}


def _write(config: MeshConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def stable(regions: Mesh, tmp_path: Path) -> Path:
    """The running mesh's config with short rings, as `ragmesh release --config` reads it."""
    release = dataclasses.replace(regions.config.release, **RINGS)
    return _write(dataclasses.replace(regions.config, release=release), tmp_path / "stable.yaml")


def _search(stub: gateway_pb2_grpc.GatewayStub, key: str) -> Send:
    metadata = (("x-api-key", key),)

    async def send(i: int) -> Reply:
        try:
            await stub.Search(pb.SearchRequest(query=f"tea {i % 7}"), metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return Reply(exc.code().name, reason=exc.details() or "")
        return Reply()

    return send


async def _release(
    mesh: Mesh, stable: Path, canary: Path, *, interrupt_at: str = ""
) -> tuple[int, str, list[Sample]]:
    """Runs `ragmesh release` under load until it exits (SIGINT once a line holds
    `interrupt_at`); its exit status, its output, the load's samples."""
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        send = _search(stub, mesh.config.mesh.demo_key)
        assert (await send(-1)).status == "OK"  # warm: the embedder has answered once
        load = asyncio.create_task(Load(send, steady(RATE)).run(duration_s=MAX_LOAD_S, stop=stop))
        argv = ["-m", "services.cli", "--config", str(stable), "release"]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            "--canary-config",
            str(canary),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        lines = []
        while line := (await process.stdout.readline()).decode():
            lines.append(line)
            if interrupt_at and interrupt_at in line:
                process.send_signal(signal.SIGINT)
        code = await process.wait()
        stop.set()
        samples = await load
    output = "".join(lines)
    print(output)
    return code, output, samples


def _runtime(mesh: Mesh) -> dict[str, str]:
    with urllib.request.urlopen(f"{mesh.admin_url}/runtime", timeout=5) as response:
        entries = json.load(response)["entries"]
    return {
        k: entries.get(k, {}).get("final_value", "") for k in (CANARY_PERCENT, CANARY_ALL_REGIONS)
    }


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _back_on_stable(mesh: Mesh) -> None:
    """Both keys 0, every canary port closed."""
    assert set(_runtime(mesh).values()) <= {"", "0"}
    offset = mesh.config.release.canary_port_offset
    for region in mesh.regions:
        g = region.config.gateway
        assert all(_closed(p + offset) for p in (g.port, g.openai_port, g.metrics_port))


def _rows(output: str) -> list[dict[str, str]]:
    """The release table's ring lines (services/console/canary.py table: the ring in 24
    columns, then requests, errors, ratio, p99, verdict, reason)."""
    rows = []
    for line in output.splitlines():
        ring = line[2:26].strip()
        if line.startswith("  ") and ring[:2] in ("0:", "1:", "2:"):
            requests, errors, _ratio, _p99, verdict, *_ = line[26:].split()
            rows.append(
                {"ring": ring[0], "requests": requests, "errors": errors, "verdict": verdict}
            )
    return rows


async def test_a_healthy_canary_is_promoted_through_every_ring(regions: Mesh, stable: Path):
    code, output, samples = await _release(regions, stable, stable)
    assert code == 0, output
    assert "PROMOTED" in output
    rows = _rows(output)
    assert [r["ring"] for r in rows] == ["0", "1", "2"]
    for row in rows:
        assert row["verdict"] == "pass", row
        # The ring's canaries served at least min_requests (the gate judges nothing less).
        assert int(row["requests"]) >= RINGS["min_requests"], row
    failed = [s for s in samples if s.status != "OK"]
    assert not failed, failed[:5]
    _back_on_stable(regions)


async def test_a_failing_canary_is_rolled_back_at_ring_0(regions: Mesh, stable: Path, tmp_path):
    # The second build cannot reach retrieval (its region's Envoy listener is a closed
    # port): every search on it fails UNAVAILABLE. Envoy tries them again on the next
    # priority, the stable gateway, so the clients see none; the gate sees the canary's.
    config = MeshConfig.load(stable)
    edge = dataclasses.replace(config.edge, internal_port=free_port())
    canary = _write(dataclasses.replace(config, edge=edge), tmp_path / "canary.yaml")
    code, output, samples = await _release(regions, stable, canary)
    assert code == 1, output
    assert "ROLLED BACK" in output
    (row,) = _rows(output)
    assert (row["ring"], row["verdict"]) == ("0", "BREACH"), row
    assert int(row["errors"]) == int(row["requests"]) >= RINGS["min_requests"]
    assert "error ratio 100.00%" in output
    # The gate's budget: slo.error_rate of what the clients sent (retries make it 0 here).
    failed = [s for s in samples if s.status != "OK"]
    assert len(failed) <= regions.config.slo.error_rate * len(samples), failed[:5]
    _back_on_stable(regions)


async def test_ctrl_c_mid_release_rolls_back(regions: Mesh, stable: Path, tmp_path):
    config = MeshConfig.load(stable)
    long = dataclasses.replace(config.release, bake_s=60.0, max_bake_s=60.0)
    slow = _write(dataclasses.replace(config, release=long), tmp_path / "slow.yaml")
    code, output, samples = await _release(regions, slow, slow, interrupt_at="ring 0:")
    assert code == 1, output
    assert "STOPPED" in output and "interrupted" in output
    assert not [s for s in samples if s.status != "OK"]
    _back_on_stable(regions)
