from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.strategies import robust_vote
from fedrank.strategies.robust_vote import (
    median_scores,
    median_vote,
    ranks_from_keys,
    trim_count,
    trimmed_borda_scores,
    trimmed_borda_vote,
)

IntArray = npt.NDArray[np.int64]


@st.composite
def stacked_rankings(draw: st.DrawFn, *, min_clients: int = 1, max_clients: int = 9) -> IntArray:
    n = draw(st.integers(min_value=1, max_value=24))
    m = draw(st.integers(min_value=min_clients, max_value=max_clients))
    rows = [draw(st.permutations(range(n))) for _ in range(m)]
    return np.array(rows, dtype=np.int64).reshape(m, n)


def is_permutation(ranks: IntArray, n: int) -> bool:
    return ranks.shape == (n,) and np.array_equal(np.sort(ranks), np.arange(n))


def reference_borda(rankings: IntArray) -> IntArray:
    """Plain Borda vote written the slow, obvious way."""
    sums = [int(column.sum()) for column in rankings.T]
    order = sorted(range(len(sums)), key=lambda edge: (sums[edge], edge))
    ranks = np.empty(len(sums), dtype=np.int64)
    for position, edge in enumerate(order):
        ranks[edge] = position
    return ranks


def order_statistic_bounds(benign: IntArray, *, attackers: int, kept: range) -> tuple[int, int]:
    """Sum over kept j of benign g_(j - a) and g_(j) for one edge's benign positions."""
    g = sorted(int(x) for x in benign)
    return sum(g[j - attackers] for j in kept), sum(g[j] for j in kept)


# ---------------------------------------------------------------- general properties


@given(rankings=stacked_rankings(), fraction=st.floats(min_value=0.0, max_value=0.49))
def test_trimmed_vote_returns_a_permutation(rankings: IntArray, fraction: float) -> None:
    ranks = trimmed_borda_vote(rankings, trim_fraction=fraction)
    assert is_permutation(ranks, rankings.shape[1])


@given(rankings=stacked_rankings())
def test_median_vote_returns_a_permutation(rankings: IntArray) -> None:
    assert is_permutation(median_vote(rankings), rankings.shape[1])


@given(rankings=stacked_rankings(), fraction=st.floats(0.0, 0.49), data=st.data())
def test_client_order_does_not_change_the_votes(
    rankings: IntArray, fraction: float, data: st.DataObject
) -> None:
    shuffled = rankings[data.draw(st.permutations(range(rankings.shape[0])))]
    assert np.array_equal(
        trimmed_borda_vote(shuffled, trim_fraction=fraction),
        trimmed_borda_vote(rankings, trim_fraction=fraction),
    )
    assert np.array_equal(median_vote(shuffled), median_vote(rankings))


@given(
    ranking=st.integers(1, 30).flatmap(lambda n: st.permutations(range(n))),
    m=st.integers(1, 9),
    fraction=st.floats(0.0, 0.49),
)
def test_a_unanimous_vote_returns_that_ranking(ranking: list[int], m: int, fraction: float) -> None:
    rankings = np.tile(np.array(ranking, dtype=np.int64), (m, 1))
    assert np.array_equal(trimmed_borda_vote(rankings, trim_fraction=fraction), ranking)
    assert np.array_equal(median_vote(rankings), ranking)


@given(rankings=stacked_rankings())
def test_no_trimming_is_the_plain_borda_vote(rankings: IntArray) -> None:
    assert np.array_equal(
        trimmed_borda_vote(rankings, trim_fraction=0.0), reference_borda(rankings)
    )


def test_inputs_are_not_mutated() -> None:
    rankings = np.array([[2, 0, 1], [0, 1, 2], [1, 2, 0]], dtype=np.int64)
    before = rankings.copy()
    trimmed_borda_vote(rankings, trim_fraction=0.34)
    median_vote(rankings)
    assert np.array_equal(rankings, before)


# ---------------------------------------------------------------- bounds under attack


@settings(max_examples=150)
@given(benign=stacked_rankings(min_clients=1, max_clients=7), data=st.data())
def test_trimmed_scores_stay_within_benign_order_statistics(
    benign: IntArray, data: st.DataObject
) -> None:
    # Arrange: a <= trim attackers (and 2 * trim < m), half of them reversing the
    # benign Borda ranking (FRL's attack), the rest sending arbitrary rankings.
    n, benign_count = benign.shape[1], benign.shape[0]
    trim = data.draw(st.integers(0, benign_count - 1))
    attackers = data.draw(st.integers(max(0, 2 * trim - benign_count + 1), trim))
    m = benign_count + attackers
    reverse = (n - 1) - reference_borda(benign)
    malicious = [
        reverse if i % 2 == 0 else np.array(data.draw(st.permutations(range(n))))
        for i in range(attackers)
    ]
    rankings = np.vstack([benign, *malicious]) if malicious else benign
    # Act
    scores = trimmed_borda_scores(rankings, trim=trim)
    # Assert: proven bound sum_j g_(j-a) <= score <= sum_j g_(j), j = trim..m-trim-1,
    # hence the trimmed mean lies within [min benign, max benign] for every edge.
    kept = range(trim, m - trim)
    for edge in range(n):
        low, high = order_statistic_bounds(benign[:, edge], attackers=attackers, kept=kept)
        assert low <= scores[edge] <= high
        assert benign[:, edge].min() * len(kept) <= scores[edge]
        assert scores[edge] <= benign[:, edge].max() * len(kept)


@settings(max_examples=150)
@given(benign=stacked_rankings(min_clients=1, max_clients=8), data=st.data())
def test_median_stays_within_benign_order_statistics(benign: IntArray, data: st.DataObject) -> None:
    n, benign_count = benign.shape[1], benign.shape[0]
    # a attackers with a <= (m - 1) // 2, m = benign + a  <=>  a <= benign - 1.
    attackers = data.draw(st.integers(0, benign_count - 1))
    reverse = (n - 1) - reference_borda(benign)
    rankings = np.vstack([benign, *([reverse] * attackers)]) if attackers else benign
    m = rankings.shape[0]
    median2, sums = median_scores(rankings)
    assert np.array_equal(sums, rankings.sum(axis=0))
    for edge in range(n):
        low, high = order_statistic_bounds(
            benign[:, edge], attackers=attackers, kept=range((m - 1) // 2, m // 2 + 1)
        )
        if m % 2 == 1:  # one middle order statistic, counted twice
            low, high = 2 * low, 2 * high
        assert low <= median2[edge] <= high


def test_plain_borda_is_moved_beyond_the_benign_range_by_one_reverser() -> None:
    # The bound above is not vacuous: without trimming one reversing client drags
    # edge 0's mean position outside every benign client's position for it.
    benign = np.array([[0, 1, 2, 3]] * 3, dtype=np.int64)
    rankings = np.vstack([benign, [3, 2, 1, 0]])
    assert trimmed_borda_scores(rankings, trim=0)[0] > benign[:, 0].max() * 4
    assert trimmed_borda_scores(rankings, trim=1)[0] == benign[:, 0].max() * 2
    assert np.array_equal(trimmed_borda_vote(rankings, trim_fraction=0.25), [0, 1, 2, 3])


# ---------------------------------------------------------------- details


def test_median_ties_break_by_mean_position_then_index() -> None:
    # Medians: e0 = 1, e1 = 1, e2 = 2, e3 = 2; sums: e0 = 4, e1 = 2, e2 = 5, e3 = 7.
    # Equal medians go by sum: e1 before e0, against edge-index order.
    rankings = np.array([[3, 1, 0, 2], [1, 0, 2, 3], [0, 1, 3, 2]], dtype=np.int64)
    assert np.array_equal(median_vote(rankings), [1, 0, 2, 3])
    # Equal medians and equal sums go by edge index.
    tied = np.array([[0, 1, 2, 3], [1, 0, 3, 2]], dtype=np.int64)
    assert np.array_equal(median_vote(tied), [0, 1, 2, 3])


@given(rankings=stacked_rankings())
def test_median_lexsort_fallback_matches_the_combined_key(rankings: IntArray) -> None:
    combined = median_vote(rankings)
    original = robust_vote._INT64_LIMIT
    robust_vote._INT64_LIMIT = 0  # force the overflow-safe path
    try:
        fallback = median_vote(rankings)
    finally:
        robust_vote._INT64_LIMIT = original
    assert np.array_equal(combined, fallback)


def test_ranks_from_keys_is_the_inverse_stable_argsort() -> None:
    keys = np.array([5, 1, 5, 0], dtype=np.int64)
    assert np.array_equal(ranks_from_keys(keys), [2, 1, 3, 0])


@pytest.mark.parametrize(
    ("clients", "fraction", "expected"), [(10, 0.3, 3), (100, 0.29, 29), (5, 0.0, 0), (3, 0.49, 1)]
)
def test_trim_count(clients: int, fraction: float, expected: int) -> None:
    assert trim_count(clients, trim_fraction=fraction) == expected


@pytest.mark.parametrize(
    ("rankings", "match"),
    [
        (np.arange(3), "shape"),
        (np.zeros((2, 3), dtype=np.float64), "integer"),
        (np.array([[0, 1, 3], [0, 1, 2]]), r"\[0, 3\)"),
        (np.array([[0, -1, 2]]), r"\[0, 3\)"),
        (np.zeros((0, 3), dtype=np.int64), "at least one"),
    ],
)
def test_bad_rankings_are_rejected(rankings: IntArray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        trimmed_borda_vote(rankings, trim_fraction=0.0)
    with pytest.raises(ValueError, match=match):
        median_vote(rankings)


def test_bad_trim_is_rejected() -> None:
    rankings = np.array([[0, 1], [1, 0]], dtype=np.int64)
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_borda_vote(rankings, trim_fraction=0.5)
    with pytest.raises(ValueError, match="trim"):
        trimmed_borda_scores(rankings, trim=1)
    with pytest.raises(ValueError, match="num_clients"):
        trim_count(0, trim_fraction=0.1)
