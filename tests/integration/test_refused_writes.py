"""A write the store refuses never blocks the corpus: it is refused before it is logged, and
an entry that reaches the log anyway (driven in here directly) is rejected, while writes,
deletes, replicas and restarts go on. Real Milvus Lite, a stand-in embedder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from ragmesh.retrieval.v1 import retrieval_pb2 as pb
from store_cores import DIM, core

from services.common.errors import InvalidArgument, Unavailable
from services.contract.documents import Document
from services.retrieval import hot_snapshot
from services.retrieval.replication import Replicator

pytestmark = pytest.mark.integration


def _doc(doc_id: str, text: str = "some text.", title: str = "t") -> Document:
    return Document(id=doc_id, title=title, text=text, metadata={"lang": "en"})


def _poisoned(tenant: str, version: int) -> list[pb.LogEntry]:
    """Two writes no store takes: a title over the column's 1,024 bytes, and vectors that do
    not make one row per chunk."""
    vector = np.ones(DIM, dtype=np.float32).tobytes()
    long_title = pb.StoredDocument(id="poison", title="T" * 1025, chunks=["x"], vectors=vector)
    torn = pb.StoredDocument(id="torn", title="t", chunks=["x", "y"], vectors=vector[:-4])
    return [
        pb.LogEntry(tenant=tenant, version=version, upsert=long_title),
        pb.LogEntry(tenant=tenant, version=version + 1, upsert=torn),
    ]


async def _documents(c, tenant: str) -> set[str]:
    chunks, _, _ = await c.search(tenant, "q", 50, {}, 5.0)
    return {chunk.document_id for chunk in chunks}


def _rejected_total() -> float:
    return REGISTRY.get_sample_value("ragmesh_retrieval_rejected_writes_total") or 0.0


@pytest.mark.parametrize("hot", [True, False], ids=["hot-index", "milvus-only"])
async def test_a_refused_log_entry_is_rejected_and_everything_goes_on(tmp_path: Path, hot):
    primary = core(tmp_path, "primary", hot)
    await primary.recover()
    await primary.upsert("acme", [_doc("a")], 5.0)
    # Logged as if the checks before the log had let them through, then a crash: nothing
    # applied them yet.
    await primary._run(primary._log.append, _poisoned("acme", 2))
    await primary.close()

    rejected_before = _rejected_total()
    primary = core(tmp_path, "primary", hot)  # the restart must not depend on them
    assert await primary.recover() == 2
    assert _rejected_total() - rejected_before == 2
    entries = await primary._run(primary._log.after, 0, 10)
    assert [bool(e.rejected) for e in entries] == [False, True, True]
    assert "title" in entries[1].rejected and not entries[1].upsert.chunks

    # Writes of the same tenant and of another, and deletes, go on.
    await primary.upsert("acme", [_doc("b")], 5.0)
    await primary.upsert("globex", [_doc("g")], 5.0)
    await primary.delete("acme", "a")
    assert await _documents(primary, "acme") == {"b"}
    assert await _documents(primary, "globex") == {"g"}
    assert await primary.version("acme") == 5  # the rejected versions 2 and 3 changed nothing

    # A replica pulls the markers and skips them.
    replica = core(tmp_path, "replica", hot, primary="primary:1")
    await replica.recover()
    pulled, head = await primary.log_after(0, 100)
    await replica.replicate(pulled, head)
    assert (await replica.replica_state()).lag == 0
    for tenant in ("acme", "globex"):
        assert await _documents(replica, tenant) == await _documents(primary, tenant)
        assert await replica.version(tenant) == await primary.version(tenant)

    # And both restart.
    for c in (primary, replica):
        await c.close()
    primary = core(tmp_path, "primary", hot)
    assert await primary.recover() == 0
    await primary.upsert("acme", [_doc("c")], 5.0)
    assert await _documents(primary, "acme") == {"b", "c"}
    await primary.close()


async def test_a_write_refused_at_apply_time_answers_its_caller(tmp_path: Path, monkeypatch):
    primary = core(tmp_path, "primary", True)
    await primary.recover()
    await primary.upsert("acme", [_doc("a", title="old")], 5.0)

    def refuse(*args, **kwargs):
        raise ValueError("the store's own rule")

    monkeypatch.setattr(primary._store._milvus, "replace_documents", refuse)
    with pytest.raises(InvalidArgument) as refused:
        await primary.upsert("acme", [_doc("a", title="new")], 5.0)
    assert refused.value.field == "documents" and "the store's own rule" in refused.value.message
    monkeypatch.undo()
    # The document is still the old one, whole; the next write goes through.
    chunks, _, _ = await primary.search("acme", "q", 10, {}, 5.0)
    assert {c.title for c in chunks} == {"old"}
    await primary.upsert("acme", [_doc("b")], 5.0)
    assert await _documents(primary, "acme") == {"a", "b"}
    await primary.close()


async def test_an_unreachable_store_leaves_the_write_pending(tmp_path: Path, monkeypatch):
    """Not a refusal: the caller gets the error, the write stays logged and is applied by
    the next write (or a restart); nothing is rejected."""
    primary = core(tmp_path, "primary", True)
    await primary.recover()
    store = primary._store._milvus

    def gone(*args, **kwargs):
        raise ConnectionError("Milvus is down")

    monkeypatch.setattr(store, "replace_documents", gone)
    monkeypatch.setattr(store, "reachable", lambda: False)
    with pytest.raises(ConnectionError):
        await primary.upsert("acme", [_doc("a")], 5.0)
    pulled, head = await primary.log_after(0, 10)
    assert (pulled, head) == ([], 0)  # undecided: not sent to replicas yet
    monkeypatch.undo()
    await primary.upsert("acme", [_doc("b")], 5.0)
    assert await _documents(primary, "acme") == {"a", "b"}
    entries = await primary._run(primary._log.after, 0, 10)
    assert not any(e.rejected for e in entries)
    await primary.close()


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (_doc("x", title="T" * 1025), "documents[0].title"),
        (_doc("x", title="字" * 342), "documents[0].title"),  # 1,026 bytes of UTF-8
        (Document(id="x", title="t", text="x.", metadata={"k": "v"}), None),
    ],
)
async def test_fields_are_checked_against_the_store_before_the_log(tmp_path, document, field):
    primary = core(tmp_path, "primary", False)
    await primary.recover()
    try:
        if field is None:
            await primary.upsert("acme", [document], 5.0)
            assert await primary.log_head() == 1
            return
        with pytest.raises(InvalidArgument) as refused:
            await primary.upsert("acme", [_doc("ok"), document], 5.0)
        assert refused.value.field == field.replace("[0]", "[1]")
        assert await primary.log_head() == 0
    finally:
        await primary.close()


async def test_the_title_limit_is_the_collections_own(tmp_path: Path):
    primary = core(tmp_path, "primary", False)
    try:
        assert primary._store.limits.varchar_bytes["title"] == 1024
        assert primary._store.limits.field_problem("acme", "x", "T" * 1024, {}, ["c"]) is None
        assert primary._store.limits.field_problem("acme", "x", "T" * 1025, {}, ["c"])[0] == (
            "title"
        )
    finally:
        await primary.close()


async def test_a_replica_that_cannot_apply_keeps_pulling(tmp_path: Path, monkeypatch):
    """Its replication loop outlives a failure to apply, and applies once it can."""
    replica = core(tmp_path, "replica", False, primary="127.0.0.1:1")
    await replica.recover()
    replicator = Replicator(replica, "127.0.0.1:1", 0.01)
    calls = 0

    async def pull_once():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("its own Milvus failed")
        return 0

    monkeypatch.setattr(replicator, "pull_once", pull_once)
    replicator.start()
    for _ in range(200):
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    assert calls >= 3 and not replicator._task.done()
    await replicator.stop()
    await replica.close()


async def test_a_snapshot_that_cannot_be_dropped_leaves_the_write_pending(tmp_path, monkeypatch):
    primary = core(tmp_path, "primary", True)
    await primary.recover()  # loads from Milvus, then saves the snapshot
    await primary.upsert("acme", [_doc("a"), _doc("b")], 5.0)
    await primary.close()  # saved again
    primary = core(tmp_path, "primary", True)
    await primary.recover()  # read from it

    def cannot(path):
        raise PermissionError(f"{path}: not removable")

    monkeypatch.setattr(hot_snapshot, "drop", cannot)
    with pytest.raises(Unavailable, match="snapshot cannot be dropped"):
        await primary.delete("acme", "a")
    entries = await primary._run(primary._log.after, 0, 10)
    assert not any(e.rejected for e in entries)  # logged, pending: not refused
    monkeypatch.undo()
    await primary.delete("acme", "b")  # applies the pending delete first
    assert await _documents(primary, "acme") == set()
    await primary.close()


async def test_a_run_without_the_hot_index_drops_the_snapshot_it_cannot_follow(tmp_path):
    primary = core(tmp_path, "primary", True)
    await primary.recover()
    await primary.upsert("acme", [_doc("a")], 5.0)
    await primary.close()
    assert (tmp_path / "primary-hot" / "manifest.json").exists()
    cold = core(tmp_path, "primary", False)
    await cold.recover()
    assert not (tmp_path / "primary-hot").exists()
    await cold.close()
