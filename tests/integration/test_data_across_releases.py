"""Rings N and N-1 read each other's data: the previous release's retrieval (deploy/
releases.yaml, its own code checked out of git) against a corpus log and Milvus Lite data
written by this tree's, and the reverse; a rollback after this release wrote loses nothing
acknowledged; data of a schema this release may not read is refused with a message that
names the versions (services/common/schemas.py). Real processes, the session's Triton."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from ragmesh.retrieval.v1 import retrieval_pb2 as pb
from ragmesh.retrieval.v1 import retrieval_pb2_grpc

from services.common import protogen
from services.common.errors import FailedPrecondition
from services.retrieval.store import SCHEMA_ROWS, MilvusStore
from services.supervisor.launcher import ROOT, Mesh, _grpc_serving, free_port
from services.supervisor.processes import Process

pytestmark = pytest.mark.integration
PREVIOUS = yaml.safe_load((ROOT / "deploy" / "releases.yaml").read_text())["previous"]


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's tree, as `git archive` gives it, with its protos generated."""
    tree = tmp_path_factory.mktemp("previous")
    archive = tree / "release.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--output", str(archive), PREVIOUS], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    # This tree's generator (its `generate` only: `make gen`'s would also point this venv's
    # .pth at that tree) on that release's protos.
    protogen.generate(tree / "protos", tree / "build" / "gen")
    return tree


@contextlib.contextmanager
def _retrieval(tree: Path, data: Path, triton: Mesh) -> Iterator[retrieval_pb2_grpc.RetrievalStub]:
    """`tree`'s retrieval on free ports, its data in `data`, embedding with `triton`: that
    release's code and its own config/mesh.yaml, the paths and ports set the way every
    release reads them (RAGMESH_RETRIEVAL_*)."""
    port = free_port()
    env = {
        # That tree's packages and generated code before this checkout's (installed editable).
        "PYTHONPATH": f"{tree}:{tree / 'build' / 'gen'}",
        "RAGMESH_RETRIEVAL_PORT": str(port),
        "RAGMESH_RETRIEVAL_METRICS_PORT": str(free_port()),
        "RAGMESH_RETRIEVAL_MILVUS_URI": str(data / "milvus.db"),
        "RAGMESH_RETRIEVAL_CORPUS_LOG": str(data / "corpus.db"),
        "RAGMESH_RETRIEVAL_HOT_SNAPSHOT": '""',  # none: every start reads Milvus
        "RAGMESH_RETRIEVAL_TRITON_TARGET": triton.regions[0].triton_target,
    }
    argv = [sys.executable, "-m", "services.retrieval", "--config", "config/mesh.yaml"]
    process = Process(f"retrieval-{tree.name}", argv, data / f"{tree.name}.log", env, cwd=tree)
    try:
        target = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not _grpc_serving(target):
            assert process.alive(), (data / f"{tree.name}.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"{tree.name}'s retrieval did not serve"
            time.sleep(0.25)
        with grpc.insecure_channel(target) as channel:
            yield retrieval_pb2_grpc.RetrievalStub(channel)
    finally:
        assert process.stop() == 0, (data / f"{tree.name}.log").read_text()[-2000:]


def _upsert(stub, doc_id: str, text: str) -> str:
    document = pb.Document(id=doc_id, title=doc_id, text=text, metadata={"lang": "en"})
    request = pb.UpsertRequest(tenant="acme", documents=[document])
    return stub.Upsert(request, timeout=120).corpus_version


def _found(stub, query: str) -> set[str]:
    reply = stub.Search(pb.SearchRequest(tenant="acme", query=query, top_k=5), timeout=30)
    return {chunk.document_id for chunk in reply.chunks}


TEA = "Green tea is brewed with water at about 80 degrees Celsius for two minutes."
BIKES = "A bicycle chain is cleaned with a degreaser, then oiled one link at a time."
MAPS = "A topographic map shows the height of the land with contour lines."


def test_the_previous_release_reads_what_this_one_wrote_and_the_reverse(
    previous, triton_only, tmp_path
) -> None:
    data = tmp_path / "data"
    with _retrieval(ROOT, data, triton_only) as now:
        assert _upsert(now, "tea", TEA) == "1"
    with _retrieval(previous, data, triton_only) as before:  # the ring rolled back
        assert "tea" in _found(before, "how hot should the water be for green tea")
        assert _upsert(before, "bikes", BIKES) == "2"
        before.Delete(pb.DeleteRequest(tenant="acme", document_id="tea"), timeout=60)
    with _retrieval(ROOT, data, triton_only) as now:  # and forward again
        assert "bikes" in _found(now, "how do I clean a bicycle chain")
        assert "tea" not in _found(now, "how hot should the water be for green tea")
        assert _upsert(now, "maps", MAPS) == "4"
    with _retrieval(previous, data, triton_only) as before:
        assert {"bikes", "maps"} <= _found(before, "contour lines of a map, bicycle chains")


def test_a_corpus_log_of_a_schema_this_release_may_not_read_is_refused_by_name(
    triton_only, tmp_path
) -> None:
    data = tmp_path / "data"
    with _retrieval(ROOT, data, triton_only) as now:
        _upsert(now, "tea", TEA)
    db = sqlite3.connect(data / "corpus.db")  # as a later release that cannot be read back
    db.execute("PRAGMA user_version = 9")
    db.execute("UPDATE state SET value = 9 WHERE key = 'readable_by'")
    db.commit()
    db.close()
    argv = [sys.executable, "-m", "services.retrieval", "--config", "config/mesh.yaml"]
    env = {
        "RAGMESH_RETRIEVAL_PORT": str(free_port()),
        "RAGMESH_RETRIEVAL_METRICS_PORT": str(free_port()),
        "RAGMESH_RETRIEVAL_MILVUS_URI": str(data / "milvus.db"),
        "RAGMESH_RETRIEVAL_CORPUS_LOG": str(data / "corpus.db"),
        "RAGMESH_RETRIEVAL_HOT_SNAPSHOT": '""',
        "RAGMESH_RETRIEVAL_TRITON_TARGET": triton_only.regions[0].triton_target,
    }
    process = Process("retrieval-refused", argv, data / "refused.log", env, cwd=ROOT)
    assert process.wait(120) == 2
    log = (data / "refused.log").read_text()
    assert "written by schema version 9, which versions before 9 cannot read" in log
    assert "this release reads 0 to 1" in log


def test_milvus_collections_carry_their_schema_out_of_every_tenant_s_sight(tmp_path) -> None:
    uri = str(tmp_path / "milvus.db")
    store = MilvusStore(uri, "", "chunks", 4)
    assert store.schema() == (1, 0)
    store.set_version("acme", 3)
    assert store.versions() == {"acme": 3}  # the schema's rows are no tenant's
    rows = [{"tenant": n, "version": -1 - 9, "vector": [0.0, 0.0]} for n in SCHEMA_ROWS]
    store._client.upsert("chunks_versions", rows)  # as a later, unreadable release
    store._client.close()
    with pytest.raises(
        FailedPrecondition, match=r"Milvus collections: written by schema version 9"
    ):
        MilvusStore(uri, "", "chunks", 4)
