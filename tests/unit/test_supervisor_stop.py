"""The launcher stops the gateways first, all at once, while the edge still carries their
streams' last events; then the rest, last started first. A process has failed once it exits
or says it crashed, and is started again then."""

from __future__ import annotations

import os
import time

import pytest

from loadtest.procfs import alive
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.supervisor.launcher import ROOT, TRITON_CRASHED, Mesh, _Spec, isolated
from services.supervisor.processes import Process

# What Triton 2.51 printed as it crashed in CI (SIGSEGV, triton-inference-server/server#8034),
# then ran on for about 30 s printing its stack.
CRASH = "Signal (11) received."


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


def _crashing(after_s: float) -> list[str]:
    """A process that prints Triton's crash line after `after_s` and runs on."""
    return ["sh", "-c", f"echo started; sleep {after_s}; echo '{CRASH}'; exec sleep 300"]


def test_a_process_that_says_it_crashed_has_failed_while_it_still_runs(tmp_path) -> None:
    process = Process("triton", _crashing(0.5), tmp_path / "t.log", fatal=TRITON_CRASHED)
    try:
        assert not process.failed()
        deadline = time.monotonic() + 10
        while not process.failed() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.failed() and process.alive()
    finally:
        process.kill()


def test_a_crash_in_the_log_of_an_earlier_run_does_not_count(tmp_path) -> None:
    log = tmp_path / "t.log"
    log.write_text(f"started\n{CRASH}\n#0 0x00007f frame\n", encoding="utf-8")
    process = Process("triton", ["sleep", "300"], log, fatal=TRITON_CRASHED)
    try:
        time.sleep(0.2)
        assert not process.failed()
    finally:
        process.kill()
    assert process.failed()  # exited


def test_a_process_without_a_fatal_pattern_fails_only_by_exiting(tmp_path) -> None:
    process = Process("envoy", _crashing(0), tmp_path / "e.log")
    try:
        time.sleep(0.5)
        assert process.failed() is False
    finally:
        process.kill()


def test_respawn_kills_a_crashed_process_that_still_runs_and_refuses_a_healthy_one(
    tmp_path,
) -> None:
    mesh = Mesh(isolated(MeshConfig.load(ROOT / "config" / "mesh.yaml"), tmp_path))
    mesh.run_dir.mkdir(parents=True)
    mesh._spawn("triton-local", _Spec(_crashing(0), None, lambda: True, TRITON_CRASHED))
    crashed = mesh.processes["triton-local"]
    try:
        deadline = time.monotonic() + 10
        while not crashed.failed() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert crashed.alive()
        mesh._specs["triton-local"] = _Spec(["sleep", "300"], None, lambda: True, TRITON_CRASHED)
        mesh.respawn("triton-local")
        assert not crashed.alive()
        again = mesh.processes["triton-local"]
        assert again is not crashed and again.alive() and not again.failed()
        with pytest.raises(RuntimeError, match="still running"):
            mesh.respawn("triton-local")
    finally:
        for process in mesh.processes.values():
            process.kill()
