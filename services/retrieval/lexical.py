"""BM25 over one tenant's chunk rows, kept beside its vectors in the hot index.

Okapi BM25 as Lucene scores it (Robertson and Zaragoza, "The Probabilistic Relevance
Framework: BM25 and Beyond", 2009, eq. 3.15; Lucene's BM25Similarity): a row's score for a
query is the sum, over the query's distinct terms that the row holds, of

    idf(t) * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / mean length))
    idf(t) = ln(1 + (rows - df(t) + 0.5) / (df(t) + 0.5))

with tf the term's count in the row, df(t) the rows holding it and length the row's terms,
all counted over this tenant's rows only, so no tenant's corpus shifts another's scores.
A row is its title and its chunk's text, as the embedder reads it. Terms are runs of word
characters (`\\w+`, Unicode), case-folded: Milvus's `standard` analyzer's rule, so
`functools.lru_cache` holds the terms `functools` and `lru_cache`. Text in a script
written without spaces (Chinese, Thai) makes few, long terms, which BM25 rarely matches:
dense search covers it.

The index is incremental: an inverted list per term (the rows holding it and each one's
count) changes with each row added or removed, so a write costs its own rows' terms (and,
for a removed row, a vectorised scan of each of its terms' lists), never a rebuild. Rows
are numbered as the partition numbers them; removing a row moves the last one into its
place, and its entries with it.
"""

from __future__ import annotations

import math
import re
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np

K1 = 1.2  # Lucene's defaults
B = 0.75
_WORD = re.compile(r"\w+")
_MAX_COUNT = 0xFFFF  # counts are stored as uint16; BM25 saturates long before


def terms(text: str) -> list[str]:
    """The text's terms, in order: runs of word characters, case-folded."""
    return _WORD.findall(text.casefold())


def row_text(title: str, text: str) -> str:
    """What a row is indexed as: its title, then its chunk."""
    return f"{title}\n{text}"


def _position(rows: array[int], row: int) -> int:
    """Where `row` is in `rows`, which holds it: numpy's scan, not array.index, which makes
    an int object of each item it passes (a common term's list holds most of the rows). The
    view is gone when this returns, so the array can grow again."""
    return int(np.flatnonzero(np.frombuffer(rows, dtype=np.intc) == row)[0])


class _Postings:
    """The rows holding one term, and the term's count in each."""

    __slots__ = ("counts", "rows")

    def __init__(self) -> None:
        self.rows = array("i")
        self.counts = array("H")


class Lexicon:
    """One tenant's BM25 index over rows 0..len(self)-1."""

    def __init__(self) -> None:
        self._postings: dict[str, _Postings] = {}
        self._lengths = array("i")  # terms of each row
        self._total = 0  # terms of every row

    def __len__(self) -> int:
        return len(self._lengths)

    @classmethod
    def restore(cls, lengths: np.ndarray, postings: Iterable[tuple[str, bytes, bytes]]) -> Lexicon:
        """An index as `lengths` and `postings` read it out (services/retrieval/hot_snapshot.py):
        each row's term count [rows] (int32), and each term with its rows (C int) and counts
        (uint16) as bytes."""
        lexicon = cls()
        lexicon._lengths.frombytes(np.ascontiguousarray(lengths, dtype=np.intc).tobytes())
        lexicon._total = int(lengths.sum())
        for term, rows, counts in postings:
            entry = lexicon._postings[term] = _Postings()
            entry.rows.frombytes(rows)
            entry.counts.frombytes(counts)
        return lexicon

    @property
    def lengths(self) -> np.ndarray:
        """Each row's term count [rows] (a copy, int32)."""
        return np.array(self._lengths, dtype=np.int32)

    def postings(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Each term with the rows holding it (C int) and its count in each (uint16): copies,
        as in `scores`."""
        for term, entry in self._postings.items():
            rows = np.frombuffer(entry.rows, dtype=np.intc).copy()
            yield term, rows, np.frombuffer(entry.counts, dtype=np.uint16).copy()

    def add(self, texts: list[str]) -> None:
        """Appends one row per text, numbered from len(self) on."""
        for text in texts:
            row, words = len(self._lengths), terms(text)
            for term, count in Counter(words).items():
                postings = self._postings.get(term)
                if postings is None:
                    postings = self._postings[term] = _Postings()
                postings.rows.append(row)
                postings.counts.append(min(count, _MAX_COUNT))
            self._lengths.append(len(words))
            self._total += len(words)

    def remove(self, row: int, text: str, last_text: str) -> None:
        """Removes `row` (indexed from `text`) and moves the last row (from `last_text`) into
        its place."""
        last = len(self._lengths) - 1
        for term in set(terms(text)):
            postings = self._postings[term]
            at = _position(postings.rows, row)
            postings.rows[at], postings.counts[at] = postings.rows[-1], postings.counts[-1]
            postings.rows.pop()
            postings.counts.pop()
            if not postings.rows:
                del self._postings[term]
        self._total -= self._lengths[row]
        if row != last:
            for term in set(terms(last_text)):
                rows = self._postings[term].rows
                rows[_position(rows, last)] = row
            self._lengths[row] = self._lengths[last]
        self._lengths.pop()

    def scores(self, query: str, mask: np.ndarray | None) -> np.ndarray:
        """Each row's BM25 score for `query` (float64, [len(self)]); 0 for a row that holds
        none of its terms or that `mask` leaves out (None: none left out)."""
        size = len(self._lengths)
        scores = np.zeros(size, dtype=np.float64)
        if not size:
            return scores
        # Copies, not views: an array exporting its buffer could not grow at the next write.
        lengths = np.array(self._lengths, dtype=np.int32)
        norm = K1 * (1 - B + B * lengths / (self._total / size or 1.0))
        for term in set(terms(query)):
            postings = self._postings.get(term)
            if postings is None:
                continue
            rows = np.array(postings.rows, dtype=np.int32)
            tf = np.array(postings.counts, dtype=np.float64)
            idf = math.log(1 + (size - len(rows) + 0.5) / (len(rows) + 0.5))
            scores[rows] += idf * tf * (K1 + 1) / (tf + norm[rows])
        if mask is not None:
            scores[~mask] = 0.0
        return scores

    @property
    def nbytes(self) -> int:
        """Bytes of the index: its lists, their terms and the row lengths; O(terms)."""
        size = sys.getsizeof(self._postings) + sys.getsizeof(self._lengths)
        for term, postings in self._postings.items():
            size += sys.getsizeof(term) + sys.getsizeof(postings)
            size += sys.getsizeof(postings.rows) + sys.getsizeof(postings.counts)
        return size
