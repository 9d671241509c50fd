"""`gateway.workers: 2` on the session's mesh: one supervisor, two processes on one port
each (gRPC and the OpenAI API), metrics summed on the supervisor's port, a killed worker
started again, and no worker left once the supervisor stops."""

from __future__ import annotations

import dataclasses
import glob
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from loadtest.procfs import alive, family
from services.console.scrape import fetch
from services.supervisor.launcher import free_port

pytestmark = pytest.mark.integration
REQUESTS = 40


def _workers(pid: int) -> list[int]:
    """The supervisor's live workers."""
    return sorted(member for member in family(pid)[1:] if alive(member))


def _until(check, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError("not in time")


def _models(port: int, key: str) -> int:
    """GET /v1/models on a connection of its own: the kernel picks the worker."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models",
        headers={"Authorization": f"Bearer {key}", "Connection": "close"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def _served_by(directory: str, pid: int) -> float:
    """ListModels calls that worker `pid` counted, read from its own metric files."""
    files = glob.glob(os.path.join(directory, f"*_{pid}.db"))
    return sum(
        s.value
        for metric in MultiProcessCollector.merge(files, accumulate=True)
        for s in metric.samples
        if s.name == "ragmesh_request_duration_seconds_count"
        and s.labels.get("method") == "ListModels"
    )


def test_two_workers_share_the_ports_and_the_supervisor_keeps_them(mesh, demo_key):
    base = mesh.regions[0].config
    gateway = dataclasses.replace(
        base.gateway, port=free_port(), openai_port=free_port(), metrics_port=free_port(), workers=2
    )
    mesh.start_gateway("gateway-workers", dataclasses.replace(base, gateway=gateway))
    supervisor = mesh.processes["gateway-workers"]
    workers, again, directory = [], [], ""
    try:
        workers = _until(lambda: (found := _workers(supervisor.pid)) and len(found) == 2 and found)
        environ = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        directory = next(
            v.split(b"=", 1)[1].decode()
            for v in environ
            if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")
        )
        # The gRPC port answers once one worker serves; wait until each has bound the
        # OpenAI port too (each served a call), then count.
        _until(
            lambda: (
                all(_models(gateway.openai_port, demo_key) == 200 for _ in range(4))
                and all(_served_by(directory, pid) for pid in workers)
            ),
            timeout_s=60.0,
        )
        before = {pid: _served_by(directory, pid) for pid in workers}
        assert all(_models(gateway.openai_port, demo_key) == 200 for _ in range(REQUESTS))
        served = {pid: _served_by(directory, pid) - before[pid] for pid in workers}
        assert sum(served.values()) == REQUESTS and all(served.values()), served
        scrape = fetch(f"http://127.0.0.1:{gateway.metrics_port}/metrics")
        assert scrape is not None  # the supervisor's endpoint, every worker's calls summed
        assert (
            scrape.total("ragmesh_request_duration_seconds_count", method="ListModels")
            >= REQUESTS + 2
        )

        os.kill(workers[0], signal.SIGKILL)
        again = _until(
            lambda: (
                (found := _workers(supervisor.pid))
                and len(found) == 2
                and workers[0] not in found
                and found
            )
        )
        assert workers[1] in again
        assert all(_models(gateway.openai_port, demo_key) == 200 for _ in range(10))
    finally:
        mesh.processes.pop("gateway-workers").stop()
    assert not [pid for pid in [*workers, *again] if alive(pid)]
    assert not os.path.exists(directory)  # the supervisor removed the metric files
    with socket.create_server(("127.0.0.1", gateway.port)):  # no worker holds the port
        pass
