import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedrank.artifacts import top_k_mask
from fedrank.errors import InvalidUpdate
from fedrank.strategies.ranking import (
    anchored_ranks,
    borda_sums,
    borda_vote,
    check_rank_vector,
    ranks_from_order,
)


@st.composite
def stacked_rankings(draw: st.DrawFn) -> np.ndarray:
    m = draw(st.integers(1, 8))
    n = draw(st.integers(1, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(m)])


def authors_vote(stacked: np.ndarray) -> np.ndarray:
    """The FRL authors' formulation on argsort rankings: argsort of argsort."""
    orders = np.argsort(stacked, axis=1)  # edge at each position, per client
    positions = np.argsort(orders, axis=1)
    return ranks_from_order(np.argsort(positions.sum(axis=0), kind="stable"))


@given(stacked_rankings())
@settings(max_examples=200, deadline=None)
def test_vote_is_a_permutation(stacked: np.ndarray) -> None:
    out = borda_vote(stacked)
    assert np.array_equal(np.sort(out), np.arange(stacked.shape[1]))


@given(stacked_rankings(), st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_client_order_does_not_change_the_vote(stacked: np.ndarray, seed: int) -> None:
    shuffled = stacked[np.random.default_rng(seed).permutation(stacked.shape[0])]
    np.testing.assert_array_equal(borda_vote(stacked), borda_vote(shuffled))


@given(
    hnp.arrays(np.int64, st.integers(1, 100), elements=st.integers(0, 10**6), unique=True),
    st.integers(1, 7),
)
@settings(max_examples=100, deadline=None)
def test_unanimous_vote_returns_that_ranking(values: np.ndarray, m: int) -> None:
    ranking = ranks_from_order(np.argsort(values, kind="stable"))
    np.testing.assert_array_equal(borda_vote(np.tile(ranking, (m, 1))), ranking)


@given(stacked_rankings())
@settings(max_examples=100, deadline=None)
def test_vote_equals_the_authors_argsort_of_argsort(stacked: np.ndarray) -> None:
    np.testing.assert_array_equal(borda_vote(stacked), authors_vote(stacked))


def test_ties_go_to_the_lower_edge_index() -> None:
    # Edge 0 and 1 tie on votes (0+1 == 1+0): the lower index ranks lower.
    out = borda_vote(np.array([[0, 1, 2], [1, 0, 2]]))
    np.testing.assert_array_equal(out, [0, 1, 2])


def test_top_k_mask_keeps_the_highest_ranks() -> None:
    ranks = np.array([3, 0, 4, 1, 2])
    np.testing.assert_array_equal(top_k_mask(ranks, 0.4), [True, False, True, False, False])
    assert top_k_mask(ranks, 0.01).sum() == 1


@pytest.mark.parametrize(
    ("ranks", "reason"),
    [
        (np.array([0, 1, 1]), "not_permutation"),
        (np.array([0, 1, 3]), "not_permutation"),
        (np.array([-1, 0, 1]), "not_permutation"),
        (np.array([0, 1]), "bad_length"),
        (np.array([[0, 1, 2]]), "bad_length"),
        (np.array([0.0, 1.0, 2.0]), "bad_dtype"),
    ],
)
def test_check_rank_vector_rejects_with_a_reason(ranks: np.ndarray, reason: str) -> None:
    with pytest.raises(InvalidUpdate) as info:
        check_rank_vector("fc1.weight", ranks, 3)
    assert info.value.reason == reason
    assert "fc1.weight" in str(info.value)


def test_check_rank_vector_accepts_any_int_dtype() -> None:
    out = check_rank_vector("l", np.array([2, 0, 1], dtype=np.uint16), 3)
    assert out.dtype == np.int64


# ---------------------------------------------------------------- anchored ranks


@settings(max_examples=60)
@given(
    n=st.integers(2, 40),
    m=st.integers(1, 6),
    anchor=st.floats(0.0, 50.0),
    seed=st.integers(0, 2**16),
)
def test_a_larger_anchor_never_moves_the_vote_further_from_the_reference(
    n: int, m: int, anchor: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    reference = rng.permutation(n)
    sums = np.stack([rng.permutation(n) for _ in range(m)]).sum(axis=0)

    def distance(a: float) -> int:
        return int(np.sum((anchored_ranks(sums, m, reference, anchor=a) - reference) ** 2))

    assert distance(anchor + 1.0) <= distance(anchor)


def test_anchor_zero_is_the_plain_vote_and_a_huge_one_the_reference() -> None:
    rng = np.random.default_rng(1)
    reference = rng.permutation(50)
    stacked = np.stack([rng.permutation(50) for _ in range(7)])
    sums = borda_sums(list(stacked))
    np.testing.assert_array_equal(sums, stacked.sum(axis=0))
    np.testing.assert_array_equal(
        anchored_ranks(sums, 7, reference, anchor=0.0), borda_vote(stacked)
    )
    np.testing.assert_array_equal(anchored_ranks(sums, 7, reference, anchor=1e12), reference)


def test_anchored_ranks_golden_values() -> None:
    # sums 10 4 6 (two replies: mean 5 2 3), reference 0 2 1, anchor 2: keys 5 6 5 -> 0 2 1
    np.testing.assert_array_equal(
        anchored_ranks(np.array([10, 4, 6]), 2, np.array([0, 2, 1]), anchor=2.0), [0, 2, 1]
    )
    # anchor 0.5: keys 5 3 3.5 -> 2 0 1
    np.testing.assert_array_equal(
        anchored_ranks(np.array([10, 4, 6]), 2, np.array([0, 2, 1]), anchor=0.5), [2, 0, 1]
    )


@pytest.mark.parametrize("anchor", [-0.1, float("nan"), float("inf")])
def test_a_negative_or_non_finite_anchor_is_refused(anchor: float) -> None:
    with pytest.raises(ValueError, match="anchor"):
        anchored_ranks(np.arange(3), 1, np.arange(3), anchor=anchor)
