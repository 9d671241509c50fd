"""The launcher stops the gateways first, all at once, while the edge still carries their
streams' last events; then the rest, last started first."""

from __future__ import annotations

import os
import time

from loadtest.procfs import alive
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.supervisor.launcher import ROOT, Mesh
from services.supervisor.processes import Process


class FakeProcess:
    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events

    def terminate(self) -> None:
        self.events.append(f"SIGTERM {self.name}")

    def stop(self, grace_s: float = 10.0) -> int:
        self.events.append(f"stop {self.name} within {grace_s:g} s")
        return 0


def test_gateways_drain_before_the_edge_stops() -> None:
    mesh = Mesh(first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 2))
    events: list[str] = []
    started = ["triton-local", "retrieval-local", "triton-remote", "retrieval-remote"]
    started += ["gateway-local", "gateway-remote", "envoy", "console"]
    mesh.processes = {name: FakeProcess(name, events) for name in started}  # type: ignore[misc]
    mesh.stop()
    assert events == [
        "SIGTERM gateway-local",
        "SIGTERM gateway-remote",
        "stop gateway-local within 15 s",  # the drain (10 s) and a margin
        "stop gateway-remote within 15 s",
        "stop console within 10 s",
        "stop envoy within 10 s",
        "stop retrieval-remote within 10 s",
        "stop triton-remote within 10 s",
        "stop retrieval-local within 10 s",
        "stop triton-local within 10 s",
    ]
    assert mesh.processes == {}


def test_what_a_dead_process_left_in_its_group_is_reaped(tmp_path) -> None:
    """A leader that dies leaves a child that ignores SIGTERM (as a Triton killed alone
    leaves its python-backend stubs): stopping it, or starting it again, kills the child."""
    script = f"trap '' TERM; sleep 300 & echo $! > {tmp_path / 'child'}; exit 0"
    process = Process("leader", ["sh", "-c", script], tmp_path / "leader.log")
    process.wait(5)
    child = int((tmp_path / "child").read_text())
    os.kill(child, 0)  # alive, in the dead leader's group
    process.stop()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
