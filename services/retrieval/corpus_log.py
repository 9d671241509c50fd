"""The corpus log: every acknowledged write, in order, durable before it is acknowledged.

At the governance point, a write appends its entries (one per document, all of one request
in one transaction) and only then is applied to Milvus and acknowledged. A replica copies
the governance point's entries into its own log, then applies them. Both keep the last
applied entry, so after a crash (even `kill -9`) a restart applies what is logged but not
yet applied. Applying is idempotent, so applying an entry twice is harmless.

SQLite with `synchronous=FULL` in WAL mode: a committed append survives the process and the
operating system. One thread (the retrieval core's store thread) uses it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ragmesh.retrieval.v1 import retrieval_pb2 as pb

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

    def after(self, seq: int, limit: int) -> list[pb.LogEntry]:
        rows = self._db.execute(
            "SELECT entry FROM log WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        )
        return [pb.LogEntry.FromString(blob) for (blob,) in rows]

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
