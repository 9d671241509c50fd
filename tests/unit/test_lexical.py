"""BM25 beside the hot index: the scores, and hybrid search within a tenant, its filters and
its writes (re-ingest, delete)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.retrieval.hot_index import HotIndex, unit
from services.retrieval.lexical import K1, B, Lexicon, terms
from services.retrieval.store import StoredChunk

DIM = 8
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def _bm25(texts, query):
    """The reference: Lucene's BM25 (lexical.py's docstring), term by term in Python."""
    rows = [terms(t) for t in texts]
    mean = sum(map(len, rows)) / len(rows)
    scores = []
    for row in rows:
        score = 0.0
        for term in set(terms(query)):
            df = sum(term in r for r in rows)
            tf = row.count(term)
            if tf:
                idf = math.log(1 + (len(rows) - df + 0.5) / (df + 0.5))
                score += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * len(row) / mean))
        scores.append(score)
    return scores


def test_terms_are_word_runs_case_folded():
    assert terms("What does functools.lru_cache(maxsize=128) do? ÉTÉ") == [
        "what",
        "does",
        "functools",
        "lru_cache",
        "maxsize",
        "128",
        "do",
        "été",
    ]


def test_scores_are_lucenes_bm25():
    texts = ["json.loads parses JSON", "json.dumps writes JSON JSON", "csv.reader reads rows"]
    lexicon = Lexicon()
    lexicon.add(texts)
    for query in ("json loads", "JSON", "rows reader json", "nothing here"):
        assert lexicon.scores(query, None) == pytest.approx(_bm25(texts, query))
    mask = np.array([True, False, True])
    assert lexicon.scores("json", mask)[1] == 0.0


def test_removing_rows_leaves_the_index_a_fresh_one_would_be():
    rng = np.random.default_rng(3)
    lexicon, texts = Lexicon(), []
    for _ in range(300):
        if texts and rng.random() < 0.4:
            row = int(rng.integers(len(texts)))
            lexicon.remove(row, texts[row], texts[-1])
            texts[row] = texts[-1]  # the last row moves into its place, as in the partition
            texts.pop()
        else:
            text = " ".join(rng.choice(WORDS, int(rng.integers(0, 12))))
            lexicon.add([text])
            texts.append(text)
    fresh = Lexicon()
    fresh.add(texts)
    assert len(lexicon) == len(texts)
    for query in ("alpha", "beta gamma", "kappa iota theta", "omega"):
        assert lexicon.scores(query, None) == pytest.approx(fresh.scores(query, None))
        assert lexicon.scores(query, None) == pytest.approx(_bm25(texts, query))


def _put(index, tenant, document, texts, vectors, meta=None, title="doc"):
    rows = [StoredChunk(document, i, 0.0, text, title, meta or {}) for i, text in enumerate(texts)]
    index.replace_document(tenant, rows, vectors)


def _hybrid(index, tenant, query, vector, top_k=5, filters=None):
    found = index.search(tenant, vector, top_k, filters or {}, text=query)
    return [(h.document_id, h.chunk_index) for h in found]


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_a_query_naming_an_identifier_lifts_its_chunk_to_the_top(rng):
    index = HotIndex(DIM)
    query = unit(rng.standard_normal(DIM))
    near = unit(query + 0.1 * rng.standard_normal((4, DIM)))  # near the query, wrong words
    far = unit(-query)  # opposite the query, the right words
    _put(index, "acme", "near", ["about compressing files"] * 4, near)
    _put(index, "acme", "far", ["itertools.compress filters by selectors"], far[None])
    assert _hybrid(index, "acme", "", query)[0][0] == "near"  # no words: dense alone
    assert _hybrid(index, "acme", "itertools.compress", query)[0][0] == "far"
    hit = index.search("acme", query, 5, {}, text="itertools.compress")[0]
    assert hit.score == pytest.approx(-1.0, abs=1e-5)  # its cosine, not a fused score


def test_tenants_neither_see_nor_shift_each_others_scores(rng):
    index = HotIndex(DIM)
    vectors = unit(rng.standard_normal((3, DIM)))
    _put(index, "acme", "a", ["zeta alpha", "alpha", "beta"], vectors)
    query = unit(rng.standard_normal(DIM))
    lexicon = index._tenants["acme"].lexicon
    scores, found = lexicon.scores("zeta beta", None), _hybrid(index, "acme", "zeta beta", query)
    for d in range(20):  # another tenant, full of one of the words
        _put(index, "globex", f"g{d}", ["zeta zeta zeta"] * 3, vectors)
    assert lexicon.scores("zeta beta", None) == pytest.approx(scores)
    assert _hybrid(index, "acme", "zeta beta", query) == found
    assert {d for d, _ in _hybrid(index, "globex", "alpha", query, 10)} <= {
        f"g{d}" for d in range(20)
    }
    assert index.search("initech", query, 5, {}, text="zeta") == []


def test_filters_hold_on_the_bm25_side(rng):
    index = HotIndex(DIM)
    query = unit(rng.standard_normal(DIM))
    _put(index, "acme", "en", ["plain words"], unit(query[None]), {"lang": "en"})
    _put(index, "acme", "de", ["itertools.compress"], unit(-query[None]), {"lang": "de"})
    found = _hybrid(index, "acme", "itertools.compress", query, 5, {"lang": "en"})
    assert found == [("en", 0)]
    assert _hybrid(index, "acme", "itertools.compress", query, 5, {"lang": "fr"}) == []


def test_bm25_follows_reingest_and_delete(rng):
    index = HotIndex(DIM)
    query = unit(rng.standard_normal(DIM))
    for d in range(5):
        _put(index, "acme", f"d{d}", [f"filler {d}"] * 2, unit(rng.standard_normal((2, DIM))))
    _put(index, "acme", "doc", ["old_name here", "more"], unit(rng.standard_normal((2, DIM))))
    assert _hybrid(index, "acme", "old_name", query, 1) == [("doc", 0)]
    _put(index, "acme", "doc", ["new_name here"], unit(rng.standard_normal((1, DIM))))
    partition = index._tenants["acme"]
    assert partition.lexicon.scores("old_name", None).max() == 0.0
    assert _hybrid(index, "acme", "new_name", query, 1) == [("doc", 0)]
    index.delete_document("acme", "doc")
    assert partition.lexicon.scores("new_name", None).max() == 0.0
    assert len(partition.lexicon) == partition.size == 10
    assert "doc" not in {d for d, _ in _hybrid(index, "acme", "new_name here", query, 20)}
