"""The live topology page through Envoy, drawn by a real browser, and `ragmesh slo`."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import pytest
from ragmesh.v1 import gateway_pb2 as pb

from services.config.console import STAGES
from services.supervisor.launcher import ROOT

pytestmark = pytest.mark.integration
LAYERS = ("client", "edge", "gateway", "retrieval", "inference", "telemetry")
WIDTH, HEIGHT = 1400, 900


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode("utf-8"))


def _traffic(stub, demo_key: str, count: int) -> None:
    metadata = (("x-api-key", demo_key),)
    for i in range(count):
        request = pb.GenerateRequest(query=f"green tea brewing {i}", tier="economy")
        stub.Generate(request, metadata=metadata, timeout=60)


def _wait_for_traffic(base: str) -> dict:
    """The console's view once it has seen the gateway's requests (it scrapes every 2 s)."""
    deadline = time.monotonic() + 30
    while True:
        view = json.loads(_get(f"{base}/topology/view.json"))
        if view["regions"][0]["gateway"]["rps"] > 0 and view["edge"]["rps"] > 0:
            return view
        assert time.monotonic() < deadline, f"the console never saw the traffic: {view}"
        time.sleep(0.5)


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is missing: `make browser` installs it (make test does)"
    argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    argv += [f"--window-size={WIDTH},{HEIGHT}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the decompressed scanlines of a PNG (filter bytes included)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_the_page_draws_every_layer_with_live_numbers(mesh, stub, demo_key, corpus, tmp_path):
    _traffic(stub, demo_key, 6)
    view = _wait_for_traffic(mesh.http_url)
    page = _get(f"{mesh.http_url}/topology")
    assert "<svg" in page and "/topology/svg" in page
    assert not re.search(r"""(src|href)=["']?https?:""", page), "the page fetches nothing"

    dom = _chromium("--virtual-time-budget=3000", "--dump-dom", f"{mesh.http_url}/topology")
    for layer in LAYERS:
        assert f">{layer}<" in dom.stdout, f"layer {layer} is not drawn"
    region = mesh.regions[0].name
    for node in ("edge", f"gateway-{region}", f"retrieval-{region}", f"inference-{region}"):
        assert f'data-node="{node}"' in dom.stdout
    rates = [float(r) for r in re.findall(r"(\d+\.\d+) rps", dom.stdout)]
    assert any(r > 0 for r in rates), "no live request rate is drawn"
    assert re.search(r"p99 \d", dom.stdout), "no live p99 is drawn"
    assert 'class="live link"' in dom.stdout, "no link pulses with traffic"

    shot = tmp_path / "topology.png"
    _chromium(f"--screenshot={shot}", "--virtual-time-budget=3000", f"{mesh.http_url}/topology")
    width, height, pixels = _png_pixels(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    assert len(set(pixels)) > 64, "the screenshot is blank"
    if os.environ.get("RAGMESH_TOPOLOGY_PNG"):  # docs/topology.png is made this way
        shutil.copy(shot, os.environ["RAGMESH_TOPOLOGY_PNG"])
    assert view["telemetry"]["detail"]


def _slo(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "services.cli", "--config", str(config), "slo"]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **env}
    )


def test_slo_prints_every_stage_against_its_budget_and_fails_on_a_breach(
    mesh, stub, demo_key, corpus
):
    _traffic(stub, demo_key, 3)
    # A streamed answer of several pieces, for time_per_output_chunk.
    streamed = pb.GenerateRequest(query="Say hello.", skip_retrieval=True, max_tokens=8)
    events = stub.GenerateStream(streamed, metadata=(("x-api-key", demo_key),), timeout=60)
    assert sum(e.HasField("token") for e in events) > 1
    config = mesh.run_dir / "mesh.yaml"
    # Verdicts, not timings: budgets every layer meets, then one no layer can.
    generous = {f"RAGMESH_SLO_{stage.upper()}_MS": "600000" for stage in STAGES}
    within = _slo(config, **generous)
    assert within.returncode == 0, within.stdout + within.stderr
    for stage in STAGES:
        row = next(line for line in within.stdout.splitlines() if line.split()[:1] == [stage])
        assert re.search(r"\d+\s+\d+\.\d\s+\d+\.\d", row), f"no p95/p99 for {stage}: {row}"
    breach = _slo(config, **{**generous, "RAGMESH_SLO_RETRIEVAL_MS": "0.001"})
    assert breach.returncode == 1
    retrieval = next(
        line for line in breach.stdout.splitlines() if line.split()[:1] == ["retrieval"]
    )
    assert "OVER BUDGET" in retrieval
