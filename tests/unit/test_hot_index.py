"""The hot index alone: exact search within a tenant and its filters, rows kept consistent."""

from __future__ import annotations

import numpy as np
import pytest

from services.retrieval import hot_index
from services.retrieval.hot_index import HotIndex, unit
from services.retrieval.store import StoredChunk

DIM = 16


def _vectors(rng, count):
    return unit(rng.standard_normal((count, DIM)))


def _put(index, tenant, document, meta, vectors, version=1):
    """Writes the document as HotStore does after Milvus took it."""
    rows = [
        StoredChunk(document, i, 0.0, f"{document} v{version} #{i}", f"title {document}", meta)
        for i in range(len(vectors))
    ]
    index.replace_document(tenant, rows, vectors)


def _exact(rows, query, top_k):
    """rows: {(document, chunk): (vector, metadata)}; the reference ranking."""
    scored = sorted(rows.items(), key=lambda item: -float(item[1][0] @ query))
    return [key for key, _ in scored[:top_k]]


def _found(index, tenant, query, top_k=5, filters=None):
    return [
        (h.document_id, h.chunk_index) for h in index.search(tenant, query, top_k, filters or {})
    ]


def test_search_is_exact_within_the_tenant():
    rng = np.random.default_rng(1)
    index = HotIndex(DIM)
    mine = {}
    for d in range(20):
        vectors = _vectors(rng, 3)
        _put(index, "acme", f"d{d}", {}, vectors, 1)
        mine.update({(f"d{d}", i): (v, {}) for i, v in enumerate(vectors)})
        _put(index, "globex", f"d{d}", {}, _vectors(rng, 3), 1)
    for query in _vectors(rng, 10):
        assert _found(index, "acme", query, 7) == _exact(mine, query, 7)
    assert index.search("nobody", _vectors(rng, 1)[0], 5, {}) == []
    hit = index.search("acme", mine["d3", 1][0], 1, {})[0]
    assert (hit.document_id, hit.chunk_index, hit.title, hit.text) == (
        "d3",
        1,
        "title d3",
        "d3 v1 #1",
    )
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_a_tenant_never_sees_another_tenants_rows():
    rng = np.random.default_rng(2)
    index = HotIndex(DIM)
    shared = _vectors(rng, 2)
    _put(index, "acme", "only-acme", {"lang": "en"}, shared, 1)
    _put(index, "globex", "only-globex", {"lang": "en"}, shared, 1)
    assert {h.document_id for h in index.search("acme", shared[0], 10, {})} == {"only-acme"}
    assert {h.document_id for h in index.search("globex", shared[0], 10, {})} == {"only-globex"}
    index.delete_document("acme", "only-globex")  # another tenant's id: nothing happens
    assert index.rows == 4


def test_filters_match_every_key_exactly():
    rng = np.random.default_rng(3)
    index = HotIndex(DIM)
    metadata = {
        "a": {"lang": "en", "source": "wiki"},
        "b": {"lang": "en", "source": "tickets"},
        "c": {"lang": "de"},
        "d": {},
    }
    for document, meta in metadata.items():
        _put(index, "t", document, meta, _vectors(rng, 2), 1)
    query = _vectors(rng, 1)[0]

    def documents(filters):
        return {h.document_id for h in index.search("t", query, 10, filters)}

    assert documents({}) == {"a", "b", "c", "d"}
    assert documents({"lang": "en"}) == {"a", "b"}
    assert documents({"lang": "en", "source": "wiki"}) == {"a"}
    assert documents({"source": "wiki", "lang": "de"}) == set()
    assert documents({"lang": "fr"}) == set()
    assert documents({"nokey": "x"}) == set()
    assert all(h.metadata == {"lang": "de"} for h in index.search("t", query, 10, {"lang": "de"}))


def test_a_new_version_replaces_the_document_and_delete_removes_it():
    rng = np.random.default_rng(4)
    index = HotIndex(DIM)
    old, new = _vectors(rng, 4), _vectors(rng, 2)
    _put(index, "t", "doc", {"v": "1"}, old, 1)
    _put(index, "t", "other", {}, _vectors(rng, 3), 1)
    _put(index, "t", "doc", {"v": "2"}, new, 2)
    hits = [h for h in index.search("t", old[0], 10, {}) if h.document_id == "doc"]
    assert sorted(h.text for h in hits) == ["doc v2 #0", "doc v2 #1"]
    assert index.search("t", old[0], 10, {"v": "1"}) == []
    _put(index, "t", "doc", {"v": "2"}, new, 2)  # the same write again
    assert index.rows == 5
    index.delete_document("t", "doc")
    assert {h.document_id for h in index.search("t", new[0], 10, {})} == {"other"}
    index.delete_document("t", "other")
    assert index.rows == 0 and index.search("t", new[0], 10, {}) == []


def test_random_writes_keep_the_index_equal_to_a_reference():
    """Swap-removal moves rows around; every search still matches a plain dict of rows."""
    rng = np.random.default_rng(5)
    index = HotIndex(DIM)
    reference = {}
    for step in range(400):
        document = f"d{rng.integers(30)}"
        if rng.random() < 0.3:
            index.delete_document("t", document)
            reference = {k: v for k, v in reference.items() if k[0] != document}
        else:
            vectors = _vectors(rng, int(rng.integers(1, 6)))
            meta = {"lang": str(rng.choice(["en", "de"]))}
            _put(index, "t", document, meta, vectors, step)
            reference = {k: v for k, v in reference.items() if k[0] != document}
            reference.update({(document, i): (v, meta) for i, v in enumerate(vectors)})
        query = _vectors(rng, 1)[0]
        assert _found(index, "t", query, 8) == _exact(reference, query, 8)
        english = {k: v for k, v in reference.items() if v[1]["lang"] == "en"}
        assert _found(index, "t", query, 8, {"lang": "en"}) == _exact(english, query, 8)
    assert index.rows == len(reference)


def test_a_big_tenant_is_searched_through_clusters_with_high_recall(monkeypatch):
    monkeypatch.setattr(hot_index, "EXACT_ROWS", 400)
    monkeypatch.setattr(hot_index, "PROBE_MIN_ROWS", 100)
    rng = np.random.default_rng(6)
    centers = _vectors(rng, 12)
    index = HotIndex(DIM)
    reference = {}
    for d in range(300):
        vectors = unit(centers[d % 12] + 0.3 * _vectors(rng, 4))
        meta = {"lang": "en" if d % 3 else "de"}
        _put(index, "t", f"d{d}", meta, vectors, 1)
        reference.update({(f"d{d}", i): (v, meta) for i, v in enumerate(vectors)})
    partition = index._tenants["t"]
    assert partition.centroids is not None and partition.trained_rows >= 800
    recalls = []
    for query in unit(centers[rng.integers(0, 12, 40)] + 0.3 * _vectors(rng, 40)):
        recalls.append(len(set(_found(index, "t", query, 10)) & set(_exact(reference, query, 10))))
        german = {k: v for k, v in reference.items() if v[1]["lang"] == "de"}
        found = index.search("t", query, 10, {"lang": "de"})
        assert found and all(h.metadata["lang"] == "de" for h in found)
        assert len(set(_found(index, "t", query, 10, {"lang": "de"}))) == 10
        assert set(_found(index, "t", query, 10, {"lang": "de"})) <= set(german)
    assert np.mean(recalls) / 10 >= 0.9
    for d in range(250):  # shrinking below EXACT_ROWS drops the clusters: exact again
        index.delete_document("t", f"d{d}")
    assert partition.centroids is None and index.rows == 200
