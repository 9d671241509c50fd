"""Schema versions of durable data (services/common/schemas.py): what a release writes beside
its data, what it reads, and the clear refusal of what it may not read."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import cast

import pytest

from services.common import schemas
from services.common.errors import FailedPrecondition
from services.control import usage
from services.control.store import Store
from services.control.usage import UsageLog, UsageRecord
from services.retrieval.corpus_log import CorpusLog

NEXT = dataclasses.replace(schemas.CORPUS_LOG, version=2, oldest=1, readable_by=2)


@pytest.mark.parametrize(
    ("written", "readable_by", "refused"),
    [
        (0, 0, None),  # before versions were kept
        (1, 0, None),  # this release's own
        (2, 0, None),  # a later release's, which it says this one reads (a field added)
        (2, 2, "which versions before 2 cannot read; this release reads 0 to 1"),
    ],
)
def test_a_release_reads_data_its_version_may_read(written, readable_by, refused) -> None:
    if refused is None:
        schemas.CORPUS_LOG.check(written, readable_by)
    else:
        with pytest.raises(FailedPrecondition, match=refused):
            schemas.CORPUS_LOG.check(written, readable_by)


def test_a_release_refuses_data_older_than_it_reads() -> None:
    with pytest.raises(FailedPrecondition, match=r"version 0, older than this release reads"):
        NEXT.check(0, 0)


def _marks(path: Path) -> tuple[int, int | None]:
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM state WHERE key = 'readable_by'").fetchone()
        return db.execute("PRAGMA user_version").fetchone()[0], row and row[0]
    finally:
        db.close()


def test_a_corpus_log_carries_its_schema_and_an_older_one_is_marked_as_read(tmp_path) -> None:
    path = tmp_path / "log.db"
    CorpusLog(str(path)).close()
    assert _marks(path) == (1, 0)
    db = sqlite3.connect(path)  # as the release before versions left it
    db.execute("PRAGMA user_version = 0")
    db.execute("DELETE FROM state WHERE key = 'readable_by'")
    db.commit()
    db.close()
    assert _marks(path) == (0, None)
    log = CorpusLog(str(path))
    assert log.schema() == (1, 0)
    log.close()


def test_a_corpus_log_a_release_may_not_read_is_refused_unchanged(tmp_path) -> None:
    path = tmp_path / "log.db"
    CorpusLog(str(path)).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 3")
    db.execute("UPDATE state SET value = 3 WHERE key = 'readable_by'")
    db.commit()
    db.close()
    with pytest.raises(FailedPrecondition, match=r"corpus log: written by schema version 3"):
        CorpusLog(str(path))
    assert _marks(path) == (3, 3)


def _record(i: int) -> UsageRecord:
    return UsageRecord(
        "acme", "k1", "standard", "m", i, 2 * i, 0.5, "miss", "local", "t", "", "ok", i
    )


class _Entries:
    """A store whose usage streams are the entries given, as XRANGE returns them."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []

    async def append_usage(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        self.entries.extend(fields for _, fields in entries)

    async def usage(self, stream: str, start_ms: int, end_ms: int) -> list[dict[str, str]]:
        return self.entries


async def test_usage_entries_carry_the_schema_and_every_version_s_records_are_read() -> None:
    store = _Entries()
    log = UsageLog(cast(Store, store))
    log.record(_record(1))
    await log.flush()
    assert (store.entries[0]["v"], store.entries[0]["rb"]) == ("1", "0")
    older = [list(_record(2))]  # written before versions were kept: no v, no rb
    later = [[*_record(3), "a field a later release added"]]
    store.entries += [{"r": json.dumps(older)}, {"r": json.dumps(later), "v": "2", "rb": "0"}]
    rows = await log.query("acme", 0, 10, "tier")
    assert [(r.group, r.requests, r.input_tokens) for r in rows] == [("standard", 3, 6)]


async def test_usage_of_a_schema_this_release_may_not_read_is_refused() -> None:
    store = _Entries()
    store.entries.append({"r": json.dumps([list(_record(1))]), "v": "2", "rb": "2"})
    with pytest.raises(FailedPrecondition, match="usage records: written by schema version 2"):
        await UsageLog(cast(Store, store)).query("acme", 0, 10, "day")
    assert usage.USAGE_RECORDS is schemas.USAGE_RECORDS
