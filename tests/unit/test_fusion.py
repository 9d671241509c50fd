"""Reciprocal rank fusion (Cormack et al. 2009, k = 60)."""

from __future__ import annotations

import pytest

from services.retrieval.fusion import K, rrf


def test_k_is_the_papers():
    assert K == 60


def test_an_item_both_rankings_hold_beats_one_ranked_first_by_one():
    # 7: 1/62 + 1/61; 2: 1/63 + 1/62; 1: 1/61 alone; 9: 1/63 alone.
    assert rrf([[1, 7, 2], [7, 2, 9]]) == [7, 2, 1, 9]


def test_scores_are_sums_of_reciprocal_ranks():
    fused = rrf([[5, 6], [6]], k=1)
    # 5: 1/2; 6: 1/3 + 1/2.
    assert fused == [6, 5]


def test_one_ranking_keeps_its_order_and_ties_keep_first_seen_order():
    assert rrf([[3, 1, 2]]) == [3, 1, 2]
    assert rrf([[4, 8], [8, 4]]) == [4, 8]  # equal sums: the first ranking's order
    assert rrf([[], [2, 1]]) == [2, 1]
    assert rrf([]) == []


@pytest.mark.parametrize("k", [1, 60, 1000])
def test_a_larger_k_flattens_but_never_reorders_a_single_ranking(k):
    assert rrf([list(range(10))], k=k) == list(range(10))
