"""The hot index's snapshot: read back equal to what was saved, or not at all."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.retrieval import hot_index, hot_snapshot
from services.retrieval.hot_index import HotIndex, unit
from services.retrieval.hot_snapshot import Stamp
from services.retrieval.store import StoredChunk

DIM = 16
WORDS = ("alpha", "beta", "gamma", "delta", "re.purge", "lru_cache", "naïve", "日本語")


def _vectors(rng, count):
    return unit(rng.standard_normal((count, DIM)))


def _put(index, rng, tenant, document, count, version=1):
    meta = {"lang": ("en", "de")[int(rng.integers(2))], "source": f"s{int(rng.integers(3))}"}
    rows = [
        StoredChunk(
            document,
            i,
            0.0,
            " ".join(rng.choice(WORDS, 6)) + f" v{version}",
            f"title {document}",
            meta,
            injection="override" if i == 2 else "",
            page=i,
            heading="Intro > Setup" if i % 2 else "",
        )
        for i in range(count)
    ]
    index.replace_document(tenant, rows, _vectors(rng, count))


@pytest.fixture
def clustered(monkeypatch):
    """Clusters from 300 rows up, so a small index is searched through them."""
    monkeypatch.setattr(hot_index, "EXACT_ROWS", 300)
    monkeypatch.setattr(hot_index, "PROBE_MIN_ROWS", 60)


def _built(rng):
    index = HotIndex(DIM)
    for d in range(120):
        _put(index, rng, "acme", f"d{d}", 4)  # 480 rows: clustered
    for d in range(10):
        _put(index, rng, "globex", f"d{d}", 3)
    _put(index, rng, "acme", "d5", 2, version=2)  # a re-ingest and a delete: rows moved
    index.delete_document("acme", "d7")
    return index


def _answers(index, rng):
    found = []
    for tenant in ("acme", "globex", "nobody"):
        for query in _vectors(rng, 8):
            for filters in ({}, {"lang": "en"}, {"lang": "en", "source": "s1"}, {"lang": "xx"}):
                for text in ("", "gamma re.purge", "日本語 naïve"):
                    found.append(index.search(tenant, query, 7, filters, text))
    return found


STAMP = Stamp("chunks", DIM, {"acme": 3, "globex": 1})


def test_a_saved_index_is_read_back_answering_the_same(tmp_path, clustered):
    rng = np.random.default_rng(1)
    index = _built(rng)
    assert index.partitions["acme"].centroids is not None
    hot_snapshot.save(index, STAMP, tmp_path / "hot")
    again = hot_snapshot.read(tmp_path / "hot", STAMP)
    assert again is not None
    assert _answers(again, np.random.default_rng(2)) == _answers(index, np.random.default_rng(2))
    for tenant, saved in index.partitions.items():
        read = again.partitions[tenant]
        assert read.rows == saved.rows
        assert {d: sorted(r) for d, r in read.documents.items()} == {
            d: sorted(r) for d, r in saved.documents.items()
        }
        assert np.array_equal(read.vectors[: read.size], saved.vectors[: saved.size])
        assert np.array_equal(read.lists[: read.size], saved.lists[: saved.size])
        assert read.trained_rows == saved.trained_rows
        assert np.array_equal(read.lexicon.lengths, saved.lexicon.lengths)
    assert again.rows == index.rows


def test_a_read_index_takes_writes_as_the_one_it_was_saved_from(tmp_path, clustered):
    index = _built(np.random.default_rng(3))
    hot_snapshot.save(index, STAMP, tmp_path / "hot")
    again = hot_snapshot.read(tmp_path / "hot", STAMP)
    assert again is not None
    for target in (index, again):  # the same writes on both: arrays grow, rows move
        rng = np.random.default_rng(4)
        for d in range(60):
            _put(target, rng, "acme", f"n{d}", 5)
        _put(target, rng, "globex", "d1", 6, version=2)
        target.delete_document("acme", "d0")
        target.delete_document("globex", "d2")
    assert _answers(again, np.random.default_rng(5)) == _answers(index, np.random.default_rng(5))


def test_an_empty_index_is_saved_and_read(tmp_path):
    hot_snapshot.save(HotIndex(DIM), Stamp("chunks", DIM, {}), tmp_path / "hot")
    again = hot_snapshot.read(tmp_path / "hot", Stamp("chunks", DIM, {}))
    assert again is not None and again.rows == 0


@pytest.mark.parametrize(
    "stamp",
    [
        Stamp("chunks", DIM, {"acme": 4, "globex": 1}),  # a write since
        Stamp("chunks", DIM, {"acme": 3, "globex": 1, "initech": 1}),  # a new tenant
        Stamp("chunks", DIM, {"acme": 3}),
        Stamp("other", DIM, {"acme": 3, "globex": 1}),
        Stamp("chunks", 32, {"acme": 3, "globex": 1}),
    ],
)
def test_a_snapshot_that_is_not_of_milvus_now_is_not_read(tmp_path, stamp):
    index = _built(np.random.default_rng(6))
    hot_snapshot.save(index, STAMP, tmp_path / "hot")
    assert hot_snapshot.read(tmp_path / "hot", stamp) is None
    assert hot_snapshot.read(tmp_path / "hot", STAMP) is not None


def test_a_missing_or_damaged_snapshot_is_not_read(tmp_path, caplog):
    path = tmp_path / "hot"
    assert hot_snapshot.read(path, STAMP) is None  # none yet
    hot_snapshot.save(_built(np.random.default_rng(7)), STAMP, path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format": 0}))
    assert hot_snapshot.read(path, STAMP) is None  # another format
    (path / "manifest.json").write_text(json.dumps(manifest))
    rows = (path / "rows.arrow").read_bytes()
    (path / "rows.arrow").write_bytes(rows[: len(rows) // 2])
    assert hot_snapshot.read(path, STAMP) is None
    assert "cannot read it" in caplog.text
    (path / "manifest.json").write_text("{not json")
    assert hot_snapshot.read(path, STAMP) is None
    assert "unreadable manifest" in caplog.text


def test_a_save_replaces_the_snapshot_and_a_drop_removes_it(tmp_path):
    path = tmp_path / "hot"
    rng = np.random.default_rng(8)
    index = _built(rng)
    hot_snapshot.save(index, STAMP, path)
    _put(index, rng, "initech", "x", 2)
    later = Stamp("chunks", DIM, {**STAMP.versions, "initech": 1})
    hot_snapshot.save(index, later, path)
    assert hot_snapshot.read(path, STAMP) is None
    again = hot_snapshot.read(path, later)
    assert again is not None and "initech" in again.partitions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hot"]  # no work directory left
    hot_snapshot.drop(path)
    assert not path.exists() and hot_snapshot.read(path, later) is None
    hot_snapshot.drop(path)  # nothing there: nothing to do


def test_nothing_but_a_snapshot_is_ever_removed(tmp_path):
    shared = tmp_path / "data"
    shared.mkdir()
    (shared / "milvus.db").write_text("the store of record")
    with pytest.raises(OSError):
        hot_snapshot.save(_built(np.random.default_rng(9)), STAMP, shared)
    hot_snapshot.drop(shared)
    assert (shared / "milvus.db").read_text() == "the store of record"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no work directory left


def test_a_snapshot_counted_by_another_analyzer_or_malformed_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "hot"
    hot_snapshot.save(_built(np.random.default_rng(10)), STAMP, path)
    monkeypatch.setattr(hot_snapshot, "terms", lambda text: text.split())  # whitespace terms
    assert hot_snapshot.read(path, STAMP) is None
    monkeypatch.undo()
    assert hot_snapshot.read(path, STAMP) is not None
    (path / "manifest.json").write_text("[1, 2]")
    assert hot_snapshot.read(path, STAMP) is None
