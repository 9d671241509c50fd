"""Fixtures: the real mesh (Triton, retrieval, gateway, Envoy) on free ports."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from services.config.mesh import MeshConfig
from services.config.regions import first
from services.control.registry import key_digest
from services.supervisor.launcher import ROOT, Mesh, isolated

OTHER_KEY = "rmk-test-other-tenant"


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    """One region: most tests are about the request path, not failover."""
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    config = isolated(base, tmp_path_factory.mktemp("mesh"))
    keys = {**config.gateway.api_keys, "other": key_digest(OTHER_KEY)}
    config = dataclasses.replace(config, gateway=dataclasses.replace(config.gateway, api_keys=keys))
    with Mesh(config) as running:
        yield running


@pytest.fixture(scope="session")
def regions(tmp_path_factory: pytest.TempPathFactory):
    """Two regions behind one edge, for failover, replication and the game days."""
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 2)
    with Mesh(isolated(base, tmp_path_factory.mktemp("regions"))) as running:
        yield running


@pytest.fixture(scope="session")
def triton_only(tmp_path_factory: pytest.TempPathFactory):
    """Triton alone with every model of triton_models/cpu/, for tests of the models' contract."""
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    config = isolated(base, tmp_path_factory.mktemp("t"))
    with Mesh(config, planes=("triton",)) as running:
        yield running


# Triton 2.51's gRPC frontend can crash (SIGSEGV in a mutex) when a request's cancellation
# races its completion: triton-inference-server/server#8034, fixed by #7840 in 24.12 (2.53),
# newer than the nvidia-pytriton wheel's. A client that leaves mid-stream provokes it, rarely.
# A crashed Triton runs on for tens of seconds, printing its stack, before it exits: it counts
# as failed from its first line about the signal (Process.failed).
_RESTARTED = pytest.StashKey[list[str]]()


@pytest.fixture(autouse=True)
def _tritons_up(request: pytest.FixtureRequest) -> None:
    """Before a test on a shared mesh: a Triton that failed during an earlier test is
    started again, so that one crash fails no unrelated test; the summary lists it."""
    for name in ("mesh", "regions"):
        if name not in request.fixturenames:
            continue
        running = request.getfixturevalue(name)
        if not isinstance(running, Mesh):  # a test's own parameter of that name
            continue
        restarted = False
        for process, triton in list(running.processes.items()):
            if process.startswith("triton-") and triton.failed():
                why = "\n".join(
                    line for line in triton.log_tail(40).splitlines() if " 0x0" not in line
                )
                running.restart(process)
                restarted = True
                request.config.stash.setdefault(_RESTARTED, []).append(
                    f"{process} had failed before {request.node.nodeid}; restarted. "
                    f"Its log ended (stack frames left out):\n{why}"
                )
        if restarted:
            _until_served(running)


def _until_served(running: Mesh, timeout_s: float = 30.0) -> None:
    """The edge answers a search again: the gateways' breakers toward retrieval, which the
    dead Triton opened, have closed (after breaker_open_s, on a probe)."""
    deadline = time.monotonic() + timeout_s
    metadata = (("x-api-key", running.config.mesh.demo_key),)
    with grpc.insecure_channel(running.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        while True:
            try:
                stub.Search(pb.SearchRequest(query="ready?"), metadata=metadata, timeout=10)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    for line in config.stash.get(_RESTARTED, []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def demo_key(mesh: Mesh) -> str:
    return mesh.config.mesh.demo_key


@pytest.fixture(scope="session")
def other_key() -> str:
    """The key of a second tenant, "other", with an empty corpus."""
    return OTHER_KEY


@pytest.fixture(scope="session")
def stub(mesh: Mesh):
    with grpc.insecure_channel(mesh.edge_target) as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


@pytest.fixture(scope="session")
def corpus(mesh: Mesh, stub, demo_key: str) -> pb.IngestDocumentsResponse:
    """A few known documents for the demo tenant, ingested once."""
    documents = [
        pb.Document(
            id="tea",
            title="Brewing green tea",
            text=(
                "Green tea should be brewed with water at about 80 degrees Celsius. "
                "Boiling water makes green tea bitter. Steep the leaves for two to three minutes."
            ),
            metadata={"topic": "drinks"},
        ),
        pb.Document(
            id="bikes",
            title="Bicycle maintenance",
            text=(
                "A bicycle chain should be cleaned and lubricated every few hundred kilometres. "
                "Tyre pressure for a road bike is usually between 80 and 120 psi."
            ),
            metadata={"topic": "sport"},
        ),
        pb.Document(
            id="volcano",
            title="Volcanoes",
            text=(
                "Mount Etna in Sicily is one of the most active volcanoes in the world. "
                "Its eruptions have been recorded for more than two thousand years."
            ),
            metadata={"topic": "geology"},
        ),
    ]
    return stub.IngestDocuments(
        pb.IngestDocumentsRequest(documents=documents),
        metadata=(("x-api-key", demo_key),),
        timeout=120,
    )


@pytest.fixture(scope="session")
def http(mesh: Mesh):
    """http(method, path, key, body) -> (status, parsed JSON or text), through Envoy."""
    return lambda method, path, key, body=None: _http(mesh, method, path, key, body)


def _http(mesh: Mesh, method: str, path: str, key: str | None, body: bytes | None):
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    request = urllib.request.Request(
        mesh.http_url + path, data=body, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def office_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lighthouses.pdf (three pages, one heading atop each) and baking.docx (headings two
    deep, a table), made by LibreOffice Writer (`make office`) from their HTML sources in
    tests/fixtures/documents: files a real office tool wrote, not we."""
    soffice = shutil.which("soffice")
    if soffice is None:
        pytest.fail("LibreOffice is not installed: `make office` installs it")
    out = tmp_path_factory.mktemp("office")
    profile = f"-env:UserInstallation={(out / 'profile').as_uri()}"
    sources = Path(__file__).parent / "fixtures" / "documents"
    convert = [soffice, profile, "--headless", "--infilter=HTML (StarWriter)", "--convert-to"]
    for name, target in (("lighthouses", "pdf"), ("baking", "docx:MS Word 2007 XML")):
        source = str(sources / f"{name}.html")
        subprocess.run(
            [*convert, target, "--outdir", str(out), source],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return out
