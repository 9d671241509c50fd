"""`ragmesh up` runs in the foreground and Ctrl-C leaves no process behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from services.config.mesh import MeshConfig
from services.supervisor.launcher import ROOT, isolated

pytestmark = pytest.mark.integration


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # a thread (or the process) that ended meanwhile
            continue
        for child in map(int, children):
            found |= {child} | _descendants(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(("sig", "regions"), [(signal.SIGINT, 1), (signal.SIGTERM, 2)])
def test_up_serves_then_stops_everything(tmp_path, sig, regions):
    config = isolated(MeshConfig.load(ROOT / "config" / "mesh.yaml"), tmp_path / "data")
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    ragmesh = Path(sys.executable).parent / "ragmesh"
    with subprocess.Popen(
        [str(ragmesh), "--config", str(path), "up", "--no-sample", "--regions", str(regions)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as launcher:
        try:
            lines = []
            for line in launcher.stdout:
                lines.append(line)
                if "ragmesh is up" in line:
                    break
            assert any("ragmesh is up" in line for line in lines), "".join(lines)
            children = _descendants(launcher.pid)
            # Per region Triton (and its stubs), retrieval (and Milvus Lite), gateway; Envoy.
            assert len(children) >= 3 * regions + 1, children
            assert f"regions {', '.join(config.mesh.regions[:regions])}" in "".join(lines)
            launcher.send_signal(sig)
            assert launcher.wait(60) == 0
            deadline = time.monotonic() + 10
            while any(map(_alive, children)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not [pid for pid in children if _alive(pid)]
        finally:
            if launcher.poll() is None:
                launcher.kill()
