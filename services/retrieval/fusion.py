"""Reciprocal rank fusion: one ranking from several, by rank alone.

Cormack, Clarke and Büttcher, "Reciprocal Rank Fusion outperforms Condorcet and individual
Rank Learning Methods" (SIGIR 2009): an item's fused score is the sum, over the rankings
that hold it, of 1 / (K + rank), rank counted from 1, with K = 60 as there. Scores of
different kinds (cosine, BM25) never meet, so neither needs scaling to the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

K = 60


def rrf(rankings: Sequence[Iterable[int]], k: int = K) -> list[int]:
    """The items of every ranking (each best first, without repeats), best fused score
    first; equal scores keep the order in which the rankings first name them."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused, key=fused.__getitem__, reverse=True)
