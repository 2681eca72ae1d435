"""The filtered vote is exactly a straightforward implementation of its rule.

``filtered_vote`` is written for speed (one pass over each layer's replies for both
the displacement matrix and the Borda sums, the survivors' sums by subtracting the
replies set aside). The reference below is the rule written plainly: stack, subtract,
one float32 Gram matrix per layer (the same matrix product as the vote, so the same
float rounding), the two tests and the threshold, then a Borda vote re-summed over the
survivors. The outputs must agree bit for bit: ranking, kept mask and agreements.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.strategies.displacements import _BLOCK, displacement_gram
from fedrank.strategies.filtered_vote import FilteredVote, filtered_vote

IntArray = npt.NDArray[np.integer]
FloatArray = npt.NDArray[np.float64]
Layers = dict[str, IntArray]
# The ranking of every layer, the kept mask and every layer's agreements.
Outcome = tuple[dict[str, npt.NDArray[np.int64]], npt.NDArray[np.bool_], dict[str, FloatArray]]

MAD_TO_SIGMA = 1.482602218505602


def _z_scores(values: FloatArray) -> FloatArray:
    median = float(np.median(values))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    deviation = values - median
    if spread > 0.0:
        z: FloatArray = deviation / spread
        return z
    return np.where(deviation == 0.0, 0.0, np.copysign(np.inf, deviation))


def _median_cosine_with_others(gram: FloatArray) -> FloatArray:
    m = gram.shape[0]
    if m == 1:
        return np.ones(1)
    norms = np.sqrt(np.maximum(np.diagonal(gram), 0.0))
    outer = norms[:, None] * norms[None, :]
    cosine = np.zeros((m, m))
    np.divide(gram, outer, out=cosine, where=outer > 0.0)
    cosine = np.clip(cosine, -1.0, 1.0)
    return np.array([np.median(np.delete(cosine[i], i)) for i in range(m)])


def _ranks(keys: npt.NDArray[np.generic]) -> npt.NDArray[np.int64]:
    ranks = np.empty(keys.shape[0], dtype=np.int64)
    ranks[np.argsort(keys, kind="stable")] = np.arange(keys.shape[0])
    return ranks


def reference_filtered_vote(
    updates: list[Layers], reference: Layers, *, mads: float, anchor: float
) -> Outcome:
    """The filtered vote's rule, one statistic at a time."""
    names = list(reference)
    m = len(updates)
    grams, agreement = [], {}
    for name in names:
        g = reference[name].astype(np.int64)
        n = g.shape[0]
        displacement = (np.stack([u[name] for u in updates]).astype(np.int64) - g).astype(
            np.float32
        )
        gram = (displacement @ displacement.T).astype(np.float64)
        grams.append(gram)
        squares = np.diagonal(gram)
        agreement[name] = 1.0 - 6.0 * squares / (n * (n * n - 1.0)) if n >= 2 else np.ones(m)
    rho = np.stack([agreement[name] for name in names])
    candidates = np.flatnonzero((rho > 0.0).all(axis=0))
    if candidates.shape[0] == 0:
        candidates = np.arange(m)
    direction = np.stack(
        [_median_cosine_with_others(g[np.ix_(candidates, candidates)]) for g in grams]
    )
    misaligned = np.zeros(candidates.shape[0], dtype=np.bool_)
    for layer in direction:
        misaligned |= (layer <= 0.0) & (_z_scores(layer) < -mads)
    if not misaligned.all():
        candidates = candidates[~misaligned]
    worst = np.min([_z_scores(rho[layer, candidates]) for layer in range(len(names))], axis=0)
    passing = worst >= -mads
    half = math.ceil(candidates.shape[0] / 2)
    if passing.sum() < half:
        passing = worst >= sorted(worst, reverse=True)[half - 1]
    kept = np.zeros(m, dtype=np.bool_)
    kept[candidates[passing]] = True
    state = {}
    for name in names:
        sums = np.stack([u[name] for u, k in zip(updates, kept, strict=True) if k]).astype(np.int64)
        sums = sums.sum(axis=0)
        if anchor == 0.0:
            state[name] = _ranks(sums)
        else:
            keys = reference[name].astype(np.float64)
            keys *= anchor * int(kept.sum())
            keys += sums
            state[name] = _ranks(keys)
    return state, kept, agreement


def assert_same(outcome: FilteredVote, expected: Outcome) -> None:
    state, kept, agreement = expected
    np.testing.assert_array_equal(outcome.kept, kept)
    assert list(outcome.state) == list(state)
    for name, ranks in state.items():
        assert outcome.state[name].dtype == np.int64
        np.testing.assert_array_equal(outcome.state[name], ranks)
        # Bit for bit, not approximately: the same floats decide the same replies.
        assert outcome.agreement[name].tobytes() == agreement[name].tobytes()


# ------------------------------------------------------------------ the one pass


@settings(max_examples=40, deadline=None)
@given(
    n=st.sampled_from([1, 2, 7, _BLOCK - 1, _BLOCK, _BLOCK + 1, 2 * _BLOCK + 3]),
    m=st.integers(1, 5),
    dtype=st.sampled_from([np.int64, np.int32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_pass_gives_the_whole_row_gram_and_the_borda_sums(
    n: int, m: int, dtype: type[np.integer], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    reference = rng.permutation(n)
    rows = [rng.permutation(n).astype(dtype) for _ in range(m)]
    sums = np.zeros(n, dtype=np.int64)

    gram = displacement_gram(rows, reference, sums=sums)

    displacement = (np.stack(rows).astype(np.int64) - reference).astype(np.float32)
    assert gram.tobytes() == (displacement @ displacement.T).astype(np.float64).tobytes()
    np.testing.assert_array_equal(sums, np.stack(rows).astype(np.int64).sum(axis=0))


def test_the_sums_must_be_int64_of_the_layer_shape() -> None:
    rows = [np.arange(5), np.arange(5)[::-1].copy()]
    with pytest.raises(ValueError, match="sums"):
        displacement_gram(rows, np.arange(5), sums=np.zeros(5, dtype=np.int32))
    with pytest.raises(ValueError, match="sums"):
        displacement_gram(rows, np.arange(5), sums=np.zeros(4, dtype=np.int64))


# ------------------------------------------------------------------ random rounds

REPLY_KINDS = ("random", "reference", "reversed", "repeat", "near")


@st.composite
def rounds(draw: st.DrawFn) -> tuple[list[Layers], Layers, float, float]:
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
    reference: Layers = {
        f"layer{i}": np.array(draw(st.permutations(range(n))), dtype=np.int64)
        for i, n in enumerate(sizes)
    }
    dtype = draw(st.sampled_from([np.int64, np.int32]))
    m = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    updates: list[Layers] = []
    for _ in range(m):
        reply: Layers = {}
        for name, g in reference.items():
            kind = draw(st.sampled_from(REPLY_KINDS))
            n = g.shape[0]
            ranks: IntArray
            if kind == "reference":
                ranks = g.copy()
            elif kind == "reversed":
                ranks = n - 1 - g
            elif kind == "repeat" and updates:  # ties: a colluder repeats an earlier reply
                ranks = updates[int(rng.integers(len(updates)))][name].copy()
            elif kind == "near":  # a few swaps away from the reference, as after training
                ranks = g.copy()
                for _ in range(int(rng.integers(0, 3))):
                    i, j = rng.integers(n, size=2)
                    ranks[[i, j]] = ranks[[j, i]]
            else:
                ranks = rng.permutation(n)
            reply[name] = ranks.astype(dtype)
        updates.append(reply)
    mads = draw(st.floats(0.25, 6.0))
    anchor = draw(st.sampled_from([0.0, 0.25, 1.0, 3.0]))
    return updates, reference, mads, anchor


@settings(max_examples=300, deadline=None)
@given(data=rounds())
def test_matches_the_plain_rule_on_random_rounds(
    data: tuple[list[Layers], Layers, float, float],
) -> None:
    updates, reference, mads, anchor = data
    outcome = filtered_vote(updates, reference, mads=mads, anchor=anchor)
    assert_same(outcome, reference_filtered_vote(updates, reference, mads=mads, anchor=anchor))


# ------------------------------------------------------------------ large layers


def large_round(
    seed: int, *, reversed_count: int, n: int = 70_000, m: int = 10
) -> tuple[list[Layers], Layers]:
    """Benign replies near the reference (a shared direction plus noise), the last
    ``reversed_count`` reversed; a second, small layer. Large enough that the float32
    Gram matrix is rounded (its sums exceed 2**24)."""
    rng = np.random.default_rng(seed)
    reference: Layers = {"big": rng.permutation(n), "small": rng.permutation(97)}
    learning = {
        name: rng.normal(0.0, 0.1 * g.shape[0], g.shape[0]) for name, g in reference.items()
    }
    updates: list[Layers] = []
    for client in range(m):
        reply: Layers = {}
        for name, g in reference.items():
            noisy = g + learning[name] + rng.normal(0.0, 0.15 * g.shape[0], g.shape[0])
            ranks = _ranks(noisy)
            reply[name] = g.shape[0] - 1 - ranks if client >= m - reversed_count else ranks
        updates.append(reply)
    return updates, reference


@pytest.mark.parametrize(
    ("seed", "reversed_count", "anchor"),
    [(0, 0, 0.0), (1, 2, 0.0), (2, 3, 0.5), (3, 6, 0.0), (4, 10, 1.0)],
)
def test_matches_the_plain_rule_on_large_rounds(
    seed: int, reversed_count: int, anchor: float
) -> None:
    updates, reference = large_round(seed, reversed_count=reversed_count)
    outcome = filtered_vote(updates, reference, mads=5.0, anchor=anchor)
    assert_same(outcome, reference_filtered_vote(updates, reference, mads=5.0, anchor=anchor))


# Recorded from the filtered vote before its one-pass rewrite (commit 6576b49): the
# sha256 of each layer's ranking and the kept mask.
GOLDEN = {
    (0, 0, 0.0): ("e06163c54fe4b146", "1111111111"),
    (1, 2, 0.0): ("0e491a4ff6b3c4df", "0111111100"),
    (2, 3, 0.5): ("5ba894d54b1ed7db", "1111111000"),
    (3, 6, 0.0): ("dd27e4027462164a", "1111000000"),
    (4, 10, 1.0): ("b7c7155a07f3032d", "1111111101"),
}


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_rankings(case: tuple[int, int, float]) -> None:
    seed, reversed_count, anchor = case
    updates, reference = large_round(seed, reversed_count=reversed_count)
    outcome = filtered_vote(updates, reference, mads=5.0, anchor=anchor)
    digest = hashlib.sha256(b"".join(outcome.state[name].tobytes() for name in reference))
    kept = "".join("1" if keep else "0" for keep in outcome.kept)
    assert (digest.hexdigest()[:16], kept) == GOLDEN[case]
