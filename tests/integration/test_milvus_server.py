"""Retrieval against a real Milvus server, not Milvus Lite.

The server is the standalone Milvus 2.3.5 that the `milvus` wheel ships (`milvus-server`:
etcd embedded, local storage; in .venv-milvus, which `make test` installs), started here on
free ports with its data under tmp_path and always stopped: SIGTERM to its process group,
then SIGKILL. The retrieval service is the real one, its own process as `make up` starts it,
reaching Milvus by URI and embedding with the session's Triton.

With the hot index on and off: ingest, search with metadata filters, re-ingest (the new
version's chunks replace the old ones), delete, tenant isolation, a restart of both the
Milvus server and retrieval with the corpus and its versions still there, and a write while
the server does not serve the collection. What the server holds is read back from it
directly as well, so a hot index answering right over a wrong Milvus would fail these tests
too. docs/retrieval.md, "Milvus deployments", says what this found.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pymilvus import MilvusClient, MilvusException
from ragmesh.retrieval.v1 import retrieval_pb2 as pb
from ragmesh.retrieval.v1 import retrieval_pb2_grpc

from services.supervisor.launcher import ROOT, Mesh, free_port, isolated
from services.supervisor.processes import Process, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]
LOGGER = logging.getLogger(__name__)

MILVUS_SERVER = ROOT / ".venv-milvus" / "bin" / "milvus-server"
MILVUS_VERSION = "v2.3.5"
# Every port milvus-server takes a flag for (its config template's `*_port` items): all
# chosen here, so none collides with another test's, and kept across a restart.
PORTS = (
    "proxy_port",
    "proxy_internal_port",
    "etcd_port",
    "root_coord_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)
# Each component advertises loopback to the others (else "the first unicastable address").
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
START_TIMEOUT_S = 240.0
STOP_GRACE_S = 60.0


class MilvusServer:
    """One `milvus-server` process: a Python wrapper that writes Milvus's config into the
    data directory, then runs the `milvus run standalone` binary as its child, in its own
    process group (Process starts it in a session of its own).

    Two settings the wrapper's template has no item for come from the environment, which
    Milvus reads every config key from as well (`etcd.config.path` as ETCD_CONFIG_PATH):
    the embedded etcd's own config, without which it listens on 2379 and 2380 whatever
    `--etcd-port` says (so two servers on one machine collide), and the query node's
    graceful stop, which otherwise waits 30 s to hand its segments to another query node
    that a standalone server does not have.
    """

    def __init__(self, data: Path) -> None:
        self.data = data
        self.ports = {name: free_port() for name in PORTS}
        self.etcd = (free_port(), free_port())  # its clients', its peers'
        self.process: Process | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy_port']}"

    def _etcd_config(self) -> Path:
        clients, peers = (f"http://127.0.0.1:{port}" for port in self.etcd)
        path = self.data / "etcd.yaml"
        path.write_text(
            f"name: default\nlisten-client-urls: {clients}\nadvertise-client-urls: {clients}\n"
            f"listen-peer-urls: {peers}\ninitial-advertise-peer-urls: {peers}\n"
            f"initial-cluster: default={peers}\n"
        )
        return path

    def start(self) -> None:
        argv = [str(MILVUS_SERVER), "--data", str(self.data)]
        argv += [f"--{name.replace('_', '-')}={port}" for name, port in self.ports.items()]
        for component in COMPONENTS:
            argv += ["--extra-config", f"{component}.ip=127.0.0.1"]
        # Milvus quits by force after this long stopping (its default: 1,800 s).
        argv += ["--extra-config", f"common.gracefulStopTimeout={int(STOP_GRACE_S) // 2}"]
        # A stop leaves the components' sessions in etcd, and after a restart reads wait for
        # them to expire: 15 s, not 30 (a session is kept alive every 5 s).
        argv += ["--extra-config", "common.session.ttl=15"]
        env = {"ETCD_CONFIG_PATH": str(self._etcd_config()), "QUERYNODE_GRACEFULSTOPTIMEOUT": "3"}
        started = time.monotonic()
        # The wrapper's output; Milvus's own logs are in data/logs.
        self.process = Process("milvus", argv, self.data / "milvus-server.log", env)
        try:
            wait_until(self._answers, self.process, START_TIMEOUT_S, interval_s=1.0)
        except BaseException:
            self.stop()
            raise
        LOGGER.info("milvus-server answered after %.1f s", time.monotonic() - started)

    def _answers(self) -> bool:
        """The proxy listens, then answers a call (the coordinators are up)."""
        try:
            socket.create_connection(("127.0.0.1", self.ports["proxy_port"]), timeout=1).close()
        except OSError:
            return False
        try:
            with contextlib.closing(self.client(timeout=3)) as client:
                client.list_collections(timeout=3)
        except (MilvusException, grpc.RpcError):  # pymilvus lets DEADLINE_EXCEEDED through
            return False
        return True

    def client(self, timeout: float | None = None) -> MilvusClient:
        """A client on a connection of its own: pymilvus shares one per URI otherwise, and
        that one may take minutes to come back after a restart of the server."""
        return MilvusClient(uri=self.uri, timeout=timeout, dedicated=True)

    def stop(self) -> None:
        """SIGTERM to the process group (the wrapper and Milvus), SIGKILL to what is left
        of it after STOP_GRACE_S."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(10)
        self.process = None


def _group_alive(group: int) -> bool:
    """Whether a process of the group still runs (a zombie does not count): the wrapper
    exits at once on SIGTERM, Milvus, its child, once it has stopped."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    if not MILVUS_SERVER.exists():
        pytest.fail(f"{MILVUS_SERVER} is not installed: `make .venv-milvus/.installed`")
    server = MilvusServer(tmp_path_factory.mktemp("milvus-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def _retrieval(triton_only: Mesh, data: Path, uri: str, hot: bool) -> Iterator[Mesh]:
    """The retrieval service alone, on free ports, embedding with the session's Triton,
    storing in the Milvus server at `uri`, in a collection of its own (the tests share the
    server), named after `data`'s parent (a test's tmp_path). No snapshot of the hot index:
    every start reads Milvus."""
    base = isolated(triton_only.config, data)
    retrieval = dataclasses.replace(
        base.retrieval,
        milvus_uri=uri,
        collection=re.sub(r"\W", "_", f"chunks_{data.parent.name}"),
        hot_index=hot,
        hybrid=hot,
        hot_snapshot="",
    )
    config = dataclasses.replace(base, triton=triton_only.config.triton, retrieval=retrieval)
    with Mesh(config, planes=("retrieval",)) as mesh:
        yield mesh


def _stub(mesh: Mesh) -> retrieval_pb2_grpc.RetrievalStub:
    return retrieval_pb2_grpc.RetrievalStub(grpc.insecure_channel(mesh.regions[0].retrieval_target))


def _collection(mesh: Mesh) -> str:
    return mesh.regions[0].config.retrieval.collection


DOCUMENTS = {
    "tea": (
        "Brewing green tea",
        {"topic": "drinks", "lang": "en"},
        (
            "Green tea should be brewed with water at about 80 degrees Celsius. Boiling water "
            "makes green tea bitter. Steep the leaves for two to three minutes."
        ),
    ),
    "bikes": (
        "Bicycle maintenance",
        {"topic": "sport", "lang": "en"},
        (
            "A bicycle chain should be cleaned and lubricated every few hundred kilometres. "
            "Tyre pressure for a road bike is usually between 80 and 120 psi."
        ),
    ),
    "volcano": (
        "Volcanoes",
        {"topic": "geology", "lang": "it"},
        (
            "Mount Etna in Sicily is one of the most active volcanoes in the world. "
            "Its eruptions have been recorded for more than two thousand years."
        ),
    ),
}
# Tenant B's documents: one of the same id as tenant A's, about something else.
OTHER = {
    "tea": (
        "Roasting coffee",
        {"topic": "drinks", "lang": "en"},
        "Coffee beans are roasted at around 200 degrees Celsius until the first crack.",
    ),
}


def _upsert(stub, tenant: str, documents: dict) -> pb.UpsertResponse:
    request = pb.UpsertRequest(
        tenant=tenant,
        documents=[
            pb.Document(id=i, title=title, text=text, metadata=metadata)
            for i, (title, metadata, text) in documents.items()
        ],
    )
    return stub.Upsert(request, timeout=120)


def _search(stub, tenant: str, query: str, filters=None, top_k: int = 10) -> list[pb.Chunk]:
    request = pb.SearchRequest(tenant=tenant, query=query, top_k=top_k, filters=filters or {})
    return list(stub.Search(request, timeout=30).chunks)


def _version(stub, tenant: str) -> str:
    return stub.GetCorpusVersion(
        pb.GetCorpusVersionRequest(tenant=tenant), timeout=10
    ).corpus_version


def _stored(milvus: MilvusServer, collection: str, tenant: str) -> dict[str, set[str]]:
    """What the server holds of the tenant, read back from it: document id -> its chunks'
    texts, spaces normalised (the chunker puts each sentence on a line)."""
    with contextlib.closing(milvus.client()) as client:
        rows = client.query(
            collection,
            filter=f'tenant == "{tenant}"',
            output_fields=["document_id", "text"],
            consistency_level="Strong",
        )
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["document_id"], set()).add(" ".join(row["text"].split()))
    return found


@pytest.mark.parametrize("hot", [True, False], ids=["hot-index", "milvus-search"])
def test_writes_searches_and_tenants_on_a_milvus_server(milvus, triton_only, tmp_path, hot):
    with _retrieval(triton_only, tmp_path / "r", milvus.uri, hot) as mesh:
        stub, collection = _stub(mesh), _collection(mesh)
        assert not list(tmp_path.rglob("milvus.db*"))  # no Milvus Lite file
        with contextlib.closing(milvus.client()) as client:
            assert client.get_server_version().startswith(MILVUS_VERSION)
        reply = _upsert(stub, "acme", DOCUMENTS)
        assert (reply.documents, reply.corpus_version) == (3, "1") and reply.chunks >= 3
        assert _upsert(stub, "globex", OTHER).corpus_version == "1"
        assert _stored(milvus, collection, "acme") == {
            i: {text} for i, (_, _, text) in DOCUMENTS.items()
        }

        # The limits checked before a write are the server's: it counts UTF-8 bytes (Milvus
        # Lite counts characters), so a title of 1,024 bytes is stored, one of 1,025 refused.
        edge = {"edge": ("é" * 512, {}, "A title as long as its column.")}
        assert _upsert(stub, "umbrella", edge).corpus_version == "1"
        with pytest.raises(grpc.RpcError) as over:
            _upsert(stub, "umbrella", {"edge": ("é" * 512 + "e", {}, "One byte too long.")})
        assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert over.value.details() == (
            "documents[0].title: 1,025 bytes of UTF-8, over the store's limit of 1,024"
        )
        assert _stored(milvus, collection, "umbrella") == {"edge": {edge["edge"][2]}}

        # Search, and search with metadata filters (every key must match).
        hits = _search(stub, "acme", "What temperature should the water be for green tea?")
        assert hits[0].document_id == "tea" and hits[0].metadata["topic"] == "drinks"
        assert {h.document_id for h in hits} == set(DOCUMENTS)
        sport = _search(stub, "acme", "green tea water temperature", {"topic": "sport"})
        assert [h.document_id for h in sport] == ["bikes"]
        italian = _search(stub, "acme", "volcano", {"topic": "geology", "lang": "it"})
        assert [h.title for h in italian] == ["Volcanoes"]
        assert _search(stub, "acme", "volcano", {"topic": "geology", "lang": "en"}) == []
        assert _search(stub, "acme", "tea", {"topic": "none"}) == []

        # Tenants: each sees its own documents only, also under the same document id.
        coffee = _search(stub, "globex", "green tea brewing temperature")
        assert [(h.document_id, h.title) for h in coffee] == [("tea", "Roasting coffee")]
        assert "Coffee" not in " ".join(h.text for h in _search(stub, "acme", "roasting coffee"))
        assert _search(stub, "initech", "green tea") == []

        # Re-ingest: the new version's chunks replace the old ones, in Milvus too.
        text = "Grüner Tee: Wasser mit 80 Grad, zwei Minuten ziehen lassen."
        new_tea = {"tea": ("Brewing green tea", {"topic": "drinks", "lang": "de"}, text)}
        assert _upsert(stub, "acme", new_tea).corpus_version == "2"
        teas = [h for h in _search(stub, "acme", "green tea", top_k=50) if h.document_id == "tea"]
        assert [(h.chunk_id, h.text, h.metadata["lang"]) for h in teas] == [("tea#0", text, "de")]
        assert _search(stub, "acme", "green tea", {"lang": "en", "topic": "drinks"}) == []
        assert _stored(milvus, collection, "acme")["tea"] == {text}
        assert _stored(milvus, collection, "globex") == {"tea": {OTHER["tea"][2]}}

        # Delete: another tenant cannot delete (nor see) acme's documents; acme can.
        with pytest.raises(grpc.RpcError) as refused:
            stub.Delete(pb.DeleteRequest(tenant="globex", document_id="volcano"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        deleted = stub.Delete(pb.DeleteRequest(tenant="globex", document_id="tea"), timeout=30)
        assert deleted.corpus_version == "2"
        assert _stored(milvus, collection, "globex") == {}
        assert "tea" in _stored(milvus, collection, "acme")
        assert stub.Delete(pb.DeleteRequest(tenant="acme", document_id="bikes"), timeout=30).deleted
        assert "bikes" not in {h.document_id for h in _search(stub, "acme", "bicycle chain")}
        assert set(_stored(milvus, collection, "acme")) == {"tea", "volcano"}
        assert (_version(stub, "acme"), _version(stub, "globex")) == ("3", "2")


@pytest.mark.parametrize("hot", [True, False], ids=["hot-index", "milvus-search"])
def test_a_restart_of_milvus_and_retrieval_keeps_the_corpus(milvus, triton_only, tmp_path, hot):
    query = "How hot should the water be for green tea?"
    with _retrieval(triton_only, tmp_path / "r", milvus.uri, hot) as mesh:
        stub, collection = _stub(mesh), _collection(mesh)
        _upsert(stub, "acme", DOCUMENTS)
        _upsert(stub, "acme", {"bikes": DOCUMENTS["bikes"]})  # version 2 replaces version 1's
        stub.Delete(pb.DeleteRequest(tenant="acme", document_id="volcano"), timeout=30)
        _upsert(stub, "globex", OTHER)
        before = [(h.chunk_id, h.text, round(h.score, 4)) for h in _search(stub, "acme", query)]
        assert [c for c, _, _ in before] == ["tea#0", "bikes#0"]

        mesh.processes["retrieval-local"].stop()
        milvus.stop()
        milvus.start()
        mesh.restart("retrieval-local")

        stub = _stub(mesh)
        after = [(h.chunk_id, h.text, round(h.score, 4)) for h in _search(stub, "acme", query)]
        assert after == before
        assert (_version(stub, "acme"), _version(stub, "globex")) == ("3", "1")
        assert set(_stored(milvus, collection, "acme")) == {"tea", "bikes"}
        # Writing goes on from the versions kept, in the corpus log and in Milvus.
        assert _upsert(stub, "acme", {"volcano": DOCUMENTS["volcano"]}).corpus_version == "4"
        assert _search(stub, "acme", "Etna", {"topic": "geology"})[0].document_id == "volcano"
        assert _search(stub, "globex", query)[0].title == "Roasting coffee"


@pytest.mark.parametrize("hot", [True, False], ids=["hot-index", "milvus-search"])
def test_a_write_while_milvus_does_not_serve_the_collection_waits_for_it(
    milvus, triton_only, tmp_path, hot
):
    """As for some seconds after a restart of the server, before it has loaded the collection
    again: Milvus answers and takes the upsert, but refuses the delete by filter that follows
    ("collection not loaded"). The write is not refused for good: it stays in the corpus
    log, and the next write applies it."""
    with _retrieval(triton_only, tmp_path / "r", milvus.uri, hot) as mesh:
        stub, collection = _stub(mesh), _collection(mesh)
        _upsert(stub, "acme", {"tea": DOCUMENTS["tea"]})
        with contextlib.closing(milvus.client()) as client:
            client.release_collection(collection)
            with pytest.raises(grpc.RpcError) as failed:
                _upsert(stub, "acme", {"bikes": DOCUMENTS["bikes"]})
            assert failed.value.code() != grpc.StatusCode.INVALID_ARGUMENT
            client.load_collection(collection)
        assert _upsert(stub, "acme", {"volcano": DOCUMENTS["volcano"]}).corpus_version == "3"
        assert set(_stored(milvus, collection, "acme")) == set(DOCUMENTS)
        assert {h.document_id for h in _search(stub, "acme", "tea, bikes, volcanoes")} == set(
            DOCUMENTS
        )
        assert _version(stub, "acme") == "3"
