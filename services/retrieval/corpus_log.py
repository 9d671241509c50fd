"""The corpus log: every acknowledged write, in order, durable before it is acknowledged.

At the governance point, a write appends its entries (one per document, all of one request
in one transaction) and only then is applied to Milvus and acknowledged. A replica copies
the governance point's entries into its own log, then applies them. Both keep the last
applied entry, so after a crash (even `kill -9`) a restart applies what is logged but not
yet applied. Applying is idempotent, so applying an entry twice is harmless.

A write the governance point's store refuses for good is rejected: its entries are rewritten
as markers (`rejected`, the reason; the payload dropped), which every log applies as
nothing, so one bad write never blocks the writes behind it (services/retrieval/core.py).

SQLite with `synchronous=FULL` in WAL mode: a committed append survives the process and the
operating system. One thread (the retrieval core's store thread) uses it.

The file's schema version is SQLite's `user_version` and the oldest version that reads it
is `readable_by` in the state table (services/common/schemas.py CORPUS_LOG): opening a log
this release may not read raises FailedPrecondition, and opening an older one it reads
marks it with this release's numbers.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ragmesh.retrieval.v1 import retrieval_pb2 as pb

from services.common.schemas import CORPUS_LOG

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS versions (tenant TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class CorpusLog:
    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._check_schema()

    def schema(self) -> tuple[int, int]:
        """(the schema version that wrote the log, the oldest version that reads it)."""
        written = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        row = self._db.execute("SELECT value FROM state WHERE key = 'readable_by'").fetchone()
        return written, int(row[0]) if row else 0

    def _check_schema(self) -> None:
        """Refuses a log this release may not read; marks an older one it reads as its own."""
        written, readable_by = self.schema()
        CORPUS_LOG.check(written, readable_by)
        if written < CORPUS_LOG.version:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO state (key, value) VALUES ('readable_by', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (CORPUS_LOG.readable_by,),
                )
                self._db.execute(f"PRAGMA user_version = {CORPUS_LOG.version:d}")

    def head(self) -> int:
        """The last entry's sequence number; 0 for an empty log."""
        return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM log").fetchone()[0])

    def version(self, tenant: str) -> int:
        """The tenant's corpus version after every logged entry."""
        row = self._db.execute("SELECT version FROM versions WHERE tenant = ?", (tenant,))
        found = row.fetchone()
        return int(found[0]) if found else 0

    def append(self, entries: list[pb.LogEntry]) -> list[pb.LogEntry]:
        """Appends `entries` (tenant, version and change set) in one transaction; numbers them."""
        numbered = []
        with self._transaction():
            seq = self.head()
            for entry in entries:
                seq += 1
                numbered.append(self._insert(seq, entry))
        return numbered

    def copy(self, entries: list[pb.LogEntry]) -> None:
        """Stores a governance point's entries as numbered there (a replica's copy)."""
        with self._transaction():
            for entry in entries:
                self._insert(entry.seq, entry)

    def after(
        self, seq: int, limit: int, *, through: int | None = None, max_bytes: int | None = None
    ) -> list[pb.LogEntry]:
        """Up to `limit` entries after `seq` (and up to `through`), in order; with `max_bytes`,
        no more than fit in it, but always the first."""
        rows = self._db.execute(
            "SELECT entry FROM log WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (seq, through if through is not None else 2**63 - 1, limit),
        )
        entries: list[pb.LogEntry] = []
        size = 0
        for (blob,) in rows:
            size += len(blob)
            if entries and max_bytes is not None and size > max_bytes:
                break
            entries.append(pb.LogEntry.FromString(blob))
        return entries

    def reject(self, entries: list[pb.LogEntry], reason: str) -> None:
        """Rewrites `entries` (numbered) as rejected markers, in one transaction."""
        with self._transaction():
            for entry in entries:
                marker = pb.LogEntry(
                    seq=entry.seq, tenant=entry.tenant, version=entry.version, rejected=reason
                )
                if entry.HasField("upsert"):
                    marker.upsert.id = entry.upsert.id
                else:
                    marker.delete_document_id = entry.delete_document_id
                self._db.execute(
                    "UPDATE log SET entry = ? WHERE seq = ?",
                    (marker.SerializeToString(), entry.seq),
                )

    def applied(self) -> int:
        row = self._db.execute("SELECT value FROM state WHERE key = 'applied'").fetchone()
        return int(row[0]) if row else 0

    def set_applied(self, seq: int) -> None:
        self._db.execute(
            "INSERT INTO state (key, value) VALUES ('applied', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (seq,),
        )

    def close(self) -> None:
        self._db.close()

    def _insert(self, seq: int, entry: pb.LogEntry) -> pb.LogEntry:
        numbered = pb.LogEntry()
        numbered.CopyFrom(entry)
        numbered.seq = seq
        self._db.execute(
            "INSERT OR IGNORE INTO log (seq, entry) VALUES (?, ?)",
            (seq, numbered.SerializeToString()),
        )
        self._db.execute(
            "INSERT INTO versions (tenant, version) VALUES (?, ?) ON CONFLICT(tenant) "
            "DO UPDATE SET version = MAX(version, excluded.version)",
            (entry.tenant, entry.version),
        )
        return numbered

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
