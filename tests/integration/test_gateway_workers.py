"""`gateway.workers: 2` on the session's mesh: one supervisor, two processes on one port
each (gRPC and the OpenAI API), each also on sockets of its own (Envoy's hosts), metrics
summed on the supervisor's port, a killed worker started again, and no worker left once the
supervisor stops."""

from __future__ import annotations

import dataclasses
import glob
import http.client
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.procfs import alive, family
from services.config.gateway import worker_sockets
from services.console.scrape import fetch
from services.gateway.workers import WORKER
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


def _served_by(directory: str, pid: int, method: str = "ListModels") -> float:
    """`method` calls that worker `pid` counted, read from its own metric files."""
    files = glob.glob(os.path.join(directory, f"*_{pid}.db"))
    return sum(
        s.value
        for metric in MultiProcessCollector.merge(files, accumulate=True)
        for s in metric.samples
        if s.name == "ragmesh_request_duration_seconds_count" and s.labels.get("method") == method
    )


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self._path))


def _environ(pid: int, name: str) -> str:
    """The value of `name` in process `pid`'s environment."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (value,) = (v.split(b"=", 1)[1] for v in environ if v.startswith(f"{name}=".encode()))
    return value.decode()


def _own_sockets_reach_their_worker(
    data_dir: str, gateway, key: str, directory: str, workers: list[int]
) -> None:
    """Worker i's own sockets (workers.worker_sockets) reach worker i alone, both APIs."""
    numbered = {int(_environ(pid, WORKER)): pid for pid in workers}
    grpc_sockets = worker_sockets(data_dir, gateway.port, 2)
    for number, path in enumerate(worker_sockets(data_dir, gateway.openai_port, 2)):
        before = {pid: _served_by(directory, pid) for pid in workers}
        connection = _UnixHTTP(path)
        for _ in range(5):  # one connection: without the sockets, one worker would take all
            connection.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200
        connection.close()
        served = {pid: _served_by(directory, pid) - before[pid] for pid in workers}
        assert served == {pid: 5 if pid == numbered[number] else 0 for pid in workers}
        before = {pid: _served_by(directory, pid, "Search") for pid in workers}
        with grpc.insecure_channel(f"unix:{grpc_sockets[number]}") as channel:
            search = gateway_pb2_grpc.GatewayStub(channel).Search
            for _ in range(3):
                search(pb.SearchRequest(query="tea"), metadata=(("x-api-key", key),), timeout=10)
        served = {pid: _served_by(directory, pid, "Search") - before[pid] for pid in workers}
        assert served == {pid: 3 if pid == numbered[number] else 0 for pid in workers}


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
        directory = _environ(workers[0], "PROMETHEUS_MULTIPROC_DIR")
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

        _own_sockets_reach_their_worker(
            mesh.config.mesh.data_dir, gateway, demo_key, directory, workers
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
    data_dir = mesh.config.mesh.data_dir
    left = [
        p for port in (gateway.port, gateway.openai_port) for p in worker_sockets(data_dir, port, 2)
    ]
    assert not [path for path in left if path.exists()]  # nor the workers their sockets
    with socket.create_server(("127.0.0.1", gateway.port)):  # no worker holds the port
        pass
