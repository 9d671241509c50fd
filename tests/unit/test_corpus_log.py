"""The corpus log: numbered, versioned, durable across a kill -9, idempotent to copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ragmesh.retrieval.v1 import retrieval_pb2 as pb

from services.retrieval.corpus_log import CorpusLog


def _doc(tenant: str, version: int, doc_id: str) -> pb.LogEntry:
    document = pb.StoredDocument(id=doc_id, chunks=["text"], vectors=b"\0" * 8)
    return pb.LogEntry(tenant=tenant, version=version, upsert=document)


def test_append_numbers_entries_and_tracks_versions(tmp_path: Path) -> None:
    log = CorpusLog(str(tmp_path / "log.db"))
    assert (log.head(), log.version("demo"), log.applied()) == (0, 0, 0)
    first = log.append([_doc("demo", 1, "a"), _doc("demo", 1, "b")])
    assert [e.seq for e in first] == [1, 2]
    log.append([pb.LogEntry(tenant="other", version=1, delete_document_id="x")])
    assert (log.head(), log.version("demo"), log.version("other")) == (3, 1, 1)
    assert [e.seq for e in log.after(1, 10)] == [2, 3]
    assert [e.upsert.id for e in log.after(0, 2)] == ["a", "b"]
    log.set_applied(2)
    assert log.applied() == 2


def test_a_replica_copy_keeps_the_numbers_and_ignores_repeats(tmp_path: Path) -> None:
    primary = CorpusLog(str(tmp_path / "primary.db"))
    replica = CorpusLog(str(tmp_path / "replica.db"))
    entries = primary.append([_doc("demo", 1, "a"), _doc("demo", 2, "a")])
    replica.copy(entries[:1])
    replica.copy(entries)  # a pull repeated after a lost reply
    assert [e.SerializeToString() for e in replica.after(0, 10)] == [
        e.SerializeToString() for e in entries
    ]
    assert replica.version("demo") == 2


def test_an_append_survives_kill_9_of_its_process(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    script = f"""
import os, signal
from ragmesh.retrieval.v1 import retrieval_pb2 as pb
from services.retrieval.corpus_log import CorpusLog
log = CorpusLog({str(path)!r})
log.append([pb.LogEntry(tenant="demo", version=1, delete_document_id="a")])
print("appended", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == -9 and "appended" in result.stdout, result.stderr
    log = CorpusLog(str(path))
    assert log.head() == 1 and log.after(0, 1)[0].delete_document_id == "a"


def test_after_stops_at_through_and_at_max_bytes_but_always_gives_one(tmp_path: Path) -> None:
    log = CorpusLog(str(tmp_path / "log.db"))
    log.append([_doc("demo", v, "a") for v in range(1, 6)])
    size = len(log.after(0, 1)[0].SerializeToString())
    assert [e.seq for e in log.after(0, 10, through=3)] == [1, 2, 3]
    assert [e.seq for e in log.after(0, 10, max_bytes=2 * size)] == [1, 2]
    assert [e.seq for e in log.after(0, 10, max_bytes=1)] == [1]
    assert log.after(5, 10) == []


def test_reject_keeps_numbers_versions_and_ids_and_drops_the_payload(tmp_path: Path) -> None:
    log = CorpusLog(str(tmp_path / "log.db"))
    entries = log.append([_doc("demo", 1, "a"), _doc("demo", 1, "b")])
    log.append([pb.LogEntry(tenant="demo", version=2, delete_document_id="a")])
    log.reject(entries, "title too long")
    marked = log.after(0, 10)
    assert [(e.seq, e.version, e.upsert.id, e.rejected) for e in marked[:2]] == [
        (1, 1, "a", "title too long"),
        (2, 1, "b", "title too long"),
    ]
    assert not marked[0].upsert.chunks and not marked[0].upsert.vectors
    assert marked[2].delete_document_id == "a" and not marked[2].rejected
    assert log.version("demo") == 2 and log.head() == 3
