import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedrank.models.topk import TopKMask, order_keys, rank_vector, sort_order

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the edges ranked in the top ``keep`` (stable ascending order, ties by index)."""
    ranks = np.argsort(np.argsort(scores.numpy(), kind="stable"), kind="stable")
    return torch.from_numpy((ranks >= scores.numel() - keep).astype(np.float32))


finite = st.floats(-1e6, 1e6, width=32, allow_subnormal=True)
special = st.sampled_from([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45])


@given(arrays(np.float32, st.integers(1, 300), elements=st.one_of(finite, special)))
def test_keys_sort_like_the_floats_ties_by_index(values: np.ndarray) -> None:
    scores = torch.from_numpy(values)
    expected = np.argsort(values, kind="stable")
    np.testing.assert_array_equal(sort_order(scores).numpy(), expected)
    ranks = rank_vector(scores).numpy()
    np.testing.assert_array_equal(np.sort(ranks), np.arange(values.size))
    np.testing.assert_array_equal(ranks[expected], np.arange(values.size))


def test_negative_and_positive_zero_share_a_key() -> None:
    keys = order_keys(torch.tensor([-0.0, 0.0, -1.0, 1.0]))
    assert keys[0] == keys[1]
    assert keys[2] < keys[0] < keys[3]


def test_keys_need_float32() -> None:
    with pytest.raises(TypeError, match="float32"):
        order_keys(torch.zeros(3, dtype=torch.float64))


@settings(max_examples=30, deadline=None)
@given(
    n=st.sampled_from([7, 500, 5000, 12000]),
    k=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31),
    steps=st.integers(1, 12),
    jump=st.floats(0.0, 0.5),
    tie=st.booleans(),
)
def test_mask_is_exact_after_every_step(
    n: int, k: float, seed: int, steps: int, jump: float, tie: bool
) -> None:
    # A random walk like an optimiser's: most scores move a little, a few jump far,
    # and some steps copy the boundary value onto another score (a tie).
    rng = np.random.default_rng(seed)
    keep = max(1, round(k * n))
    selector = TopKMask(n, keep)
    scores = rng.standard_normal(n).astype(np.float32)
    for _ in range(steps):
        scores = scores + rng.normal(0, 0.01, n).astype(np.float32)
        jumpers = rng.random(n) < jump * 0.01
        scores[jumpers] = rng.standard_normal(int(jumpers.sum())).astype(np.float32)
        if tie and keep < n:
            order = np.argsort(scores, kind="stable")
            scores[order[n - keep - 1]] = scores[order[n - keep]]
        t = torch.from_numpy(scores.copy())
        mask = selector(t)
        torch.testing.assert_close(mask, reference_mask(t, keep), rtol=0, atol=0)
        assert int(mask.sum()) == keep


def test_answer_does_not_depend_on_the_history() -> None:
    rng = np.random.default_rng(3)
    used = TopKMask(50_000, 20_000)
    for _ in range(5):
        used(torch.from_numpy(rng.standard_normal(50_000).astype(np.float32)))
    scores = torch.from_numpy(rng.standard_normal(50_000).astype(np.float32))
    torch.testing.assert_close(used(scores), TopKMask(50_000, 20_000)(scores), rtol=0, atol=0)


def test_a_good_hint_and_a_wrong_hint_give_the_same_mask() -> None:
    scores = torch.linspace(-1, 1, 10_000)[torch.randperm(10_000, generator=torch.Generator())]
    right, wrong = TopKMask(10_000, 3_000), TopKMask(10_000, 3_000)
    right.hint(threshold=float(torch.linspace(-1, 1, 10_000)[6_999]), density=5000.0)
    wrong.hint(threshold=0.9, density=1e9)
    torch.testing.assert_close(right(scores), reference_mask(scores, 3_000), rtol=0, atol=0)
    torch.testing.assert_close(wrong(scores), reference_mask(scores, 3_000), rtol=0, atol=0)


def test_keep_everything_and_bad_sizes() -> None:
    assert torch.equal(TopKMask(4, 4)(torch.rand(2, 2)), torch.ones(2, 2))
    with pytest.raises(ValueError, match="keep"):
        TopKMask(4, 0)
    with pytest.raises(ValueError, match="expected 4 scores"):
        TopKMask(4, 2)(torch.rand(5))


def test_other_float_types_sort_too() -> None:
    scores = torch.tensor([0.5, -1.0, 0.5, 2.0], dtype=torch.float64)
    np.testing.assert_array_equal(rank_vector(scores).numpy(), [1, 0, 2, 3])
    mask = TopKMask(4, 2)(scores)
    np.testing.assert_array_equal(mask.numpy(), [0, 0, 1, 1])
