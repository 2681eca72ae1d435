from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from fedrank.strategies.filtered_vote import (
    agreement_z_scores,
    direction_agreement,
    filtered_vote,
    keep_agreeing,
    spearman_to_reference,
)
from fedrank.strategies.ranking import ranks_from_order, vote_layers

IntArray = npt.NDArray[np.int64]


def is_permutation(ranks: IntArray, n: int) -> bool:
    return ranks.shape == (n,) and np.array_equal(np.sort(ranks), np.arange(n))


def ranks_of(scores: npt.NDArray[np.float64]) -> IntArray:
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    ranks[np.argsort(scores, kind="stable")] = np.arange(scores.shape[0])
    return ranks


def benign_round(
    seed: int, *, n: int = 400, clients: int = 10, noise: float = 0.15, signal: float = 0.1
) -> tuple[IntArray, list[IntArray]]:
    """A reference ranking and clients that each move it a little (as local training does):
    a shared direction of learning plus each client's own noise."""
    rng = np.random.default_rng(seed)
    reference = rng.permutation(n).astype(np.int64)
    learning = rng.normal(0.0, signal * n, size=n)
    clients_rankings = [
        ranks_of(reference + learning + rng.normal(0.0, noise * n, size=n)) for _ in range(clients)
    ]
    return reference, clients_rankings


@st.composite
def rounds(draw: st.DrawFn) -> tuple[IntArray, list[IntArray]]:
    n = draw(st.integers(min_value=2, max_value=30))
    m = draw(st.integers(min_value=1, max_value=9))
    reference = np.array(draw(st.permutations(range(n))), dtype=np.int64)
    replies = [np.array(draw(st.permutations(range(n))), dtype=np.int64) for _ in range(m)]
    return reference, replies


# ---------------------------------------------------------------- Spearman


@given(data=rounds())
def test_spearman_matches_scipy(data: tuple[IntArray, list[IntArray]]) -> None:
    reference, replies = data
    rho = spearman_to_reference(np.stack(replies), reference)
    expected = [spearmanr(r, reference).statistic for r in replies]
    np.testing.assert_allclose(rho, expected, atol=1e-12)


def test_spearman_of_the_reference_and_its_reverse() -> None:
    reference = np.random.default_rng(0).permutation(50)
    rho = spearman_to_reference(np.stack([reference, 49 - reference]), reference)
    np.testing.assert_allclose(rho, [1.0, -1.0])


# ---------------------------------------------------------------- threshold


def test_z_scores_are_median_centred_and_mad_scaled() -> None:
    z = agreement_z_scores(np.array([0.9, 0.91, 0.92, 0.93, 0.5]))  # median 0.91, MAD 0.01
    assert z[1] == 0.0
    assert z[0] == pytest.approx(-1 / 1.482602218505602)
    assert z[3] == pytest.approx(2 / 1.482602218505602)
    assert z[4] < -20


def test_a_tied_majority_makes_every_other_value_infinitely_far() -> None:
    z = agreement_z_scores(np.array([1.0, 1.0, 1.0, 0.99]))
    assert list(z) == [0.0, 0.0, 0.0, -math.inf]


@given(
    z=st.lists(
        st.lists(st.floats(-50, 50), min_size=1, max_size=12), min_size=1, max_size=3
    ).filter(lambda rows: len({len(r) for r in rows}) == 1),
    mads=st.floats(0.1, 10.0),
)
def test_keeps_every_reply_above_the_threshold_and_at_least_half(
    z: list[list[float]], mads: float
) -> None:
    scores = np.array(z)
    kept = keep_agreeing(scores, mads=mads)
    m = scores.shape[1]
    assert kept.sum() >= math.ceil(m / 2)
    passing = scores.min(axis=0) >= -mads
    if passing.sum() >= math.ceil(m / 2):
        np.testing.assert_array_equal(kept, passing)
    elif (~kept).any():  # the best half by worst-layer score
        assert scores.min(axis=0)[kept].min() >= scores.min(axis=0)[~kept].max()


# ---------------------------------------------------------------- the vote


@settings(max_examples=60)
@given(data=rounds(), mads=st.floats(0.5, 5.0), seed=st.integers(0, 2**16))
def test_vote_is_a_permutation_independent_of_reply_order(
    data: tuple[IntArray, list[IntArray]], mads: float, seed: int
) -> None:
    reference, replies = data
    updates = [{"layer": r} for r in replies]
    order = np.random.default_rng(seed).permutation(len(updates))

    outcome = filtered_vote(updates, {"layer": reference}, mads=mads)
    shuffled = filtered_vote([updates[i] for i in order], {"layer": reference}, mads=mads)

    assert is_permutation(outcome.state["layer"], reference.shape[0])
    np.testing.assert_array_equal(outcome.state["layer"], shuffled.state["layer"])
    np.testing.assert_array_equal(outcome.kept[order], shuffled.kept)


@pytest.mark.parametrize("seed", range(5))
def test_reversed_and_random_replies_are_dropped_and_benign_ones_voted(seed: int) -> None:
    reference, benign = benign_round(seed)
    rng = np.random.default_rng(100 + seed)
    estimate = vote_layers([{"l": b} for b in benign[:2]])["l"]
    attackers = [399 - estimate, 399 - estimate, rng.permutation(400)]
    updates = [{"l": r} for r in benign + attackers]

    outcome = filtered_vote(updates, {"l": reference}, mads=3.0)

    assert not outcome.kept[len(benign) :].any()
    kept_benign = [{"l": b} for b, keep in zip(benign, outcome.kept, strict=False) if keep]
    assert len(kept_benign) >= math.ceil(len(benign) / 2)
    np.testing.assert_array_equal(outcome.state["l"], vote_layers(kept_benign)["l"])


def test_without_attackers_nearly_every_benign_reply_is_kept() -> None:
    dropped = 0
    for seed in range(20):
        reference, benign = benign_round(seed)
        dropped += int(
            (~filtered_vote([{"l": b} for b in benign], {"l": reference}, mads=3.0).kept).sum()
        )
    assert dropped <= 0.05 * 20 * 10


def test_an_attack_on_one_small_layer_is_not_diluted_by_the_large_one() -> None:
    big_ref, big = benign_round(1, n=2000)
    small_ref, small = benign_round(2, n=20)
    updates = [{"big": b, "small": s} for b, s in zip(big, small, strict=True)]
    updates.append({"big": big[0], "small": 19 - small_ref})  # reverses the small layer only

    outcome = filtered_vote(updates, {"big": big_ref, "small": small_ref}, mads=3.0)

    assert not outcome.kept[-1]


def test_every_kept_reply_clears_the_threshold_and_points_with_the_others() -> None:
    reference, replies = benign_round(7, clients=12, noise=0.3)
    consensus = vote_layers([{"l": b} for b in replies])["l"]
    replies.append(ranks_of(reference - (consensus - reference)))  # agrees, but moved backwards
    outcome = filtered_vote([{"l": r} for r in replies], {"l": reference}, mads=2.0)

    aligned = direction_agreement(np.stack(replies), reference) > 0
    rho = outcome.agreement["l"][aligned]
    median = np.median(rho)
    tau = median - 2.0 * 1.482602218505602 * np.median(np.abs(rho - median))

    assert aligned.sum() == len(replies) - 1
    assert not aligned[-1]
    np.testing.assert_array_equal(outcome.kept[aligned], rho >= tau)
    assert not outcome.kept[-1]


# ---------------------------------------------------------------- direction


def test_direction_agreement_is_the_median_cosine_with_the_other_replies() -> None:
    reference = np.arange(6)
    replies = np.stack([[1, 0, 2, 3, 4, 5], [1, 0, 2, 3, 5, 4], [0, 1, 2, 3, 5, 4]])
    d = (replies - reference).astype(np.float64)
    unit = d / np.linalg.norm(d, axis=1, keepdims=True)
    cos = unit @ unit.T

    agreement = direction_agreement(replies, reference)

    half = 0.5 * math.sqrt(0.5)  # by hand: cos 0-1 = cos 1-2 = sqrt(1/2), cos 0-2 = 0
    np.testing.assert_allclose([cos[0, 1], cos[1, 2], cos[0, 2]], [2 * half, 2 * half, 0.0])
    np.testing.assert_allclose(agreement, [half, 2 * half, half])


def test_a_cluster_of_identical_reversals_still_points_against_the_round() -> None:
    reference, benign = benign_round(3, clients=6)
    estimate = vote_layers([{"l": b} for b in benign[:2]])["l"]
    reversal = ranks_of(reference - 3.0 * (estimate - reference))  # g minus an amplified update
    replies = np.stack([*benign, reversal, reversal, reversal, reversal])

    agreement = direction_agreement(replies, reference)

    assert (agreement[:6] > 0).all()
    assert (agreement[6:] < 0).all()


def test_a_reply_that_did_not_move_points_nowhere_and_a_lone_reply_agrees() -> None:
    reference, benign = benign_round(4, clients=3)
    agreement = direction_agreement(np.stack([reference, *benign]), reference)
    assert agreement[0] == 0.0
    assert direction_agreement(np.stack(benign[:1]), reference).tolist() == [1.0]


def test_mismatched_layers_are_refused() -> None:
    with pytest.raises(ValueError, match="reference's layers"):
        filtered_vote([{"a": np.arange(3)}], {"b": np.arange(3)}, mads=3.0)


@pytest.mark.parametrize("attackers", [5, 6, 9])
def test_reversals_are_dropped_even_when_they_are_half_of_the_round_or_more(attackers: int) -> None:
    reference, benign = benign_round(11, clients=10 - attackers)
    estimate = vote_layers([{"l": b} for b in benign])["l"]
    updates = [{"l": r} for r in benign] + [{"l": 399 - estimate} for _ in range(attackers)]

    outcome = filtered_vote(updates, {"l": reference}, mads=3.0)

    assert outcome.kept[: len(benign)].sum() >= (len(benign) + 1) // 2
    assert not outcome.kept[len(benign) :].any()


def test_when_no_reply_agrees_at_all_the_best_half_is_voted() -> None:
    rng = np.random.default_rng(0)
    reference = rng.permutation(50)
    replies = [{"l": 49 - reference} for _ in range(4)]
    outcome = filtered_vote(replies, {"l": reference}, mads=3.0)
    assert outcome.kept.sum() >= 2


def test_replies_pointing_below_zero_by_noise_alone_are_kept() -> None:
    # Ten benign-like replies: the reference's scores plus independent noise, no shared
    # direction, so their median cosines scatter around a small positive value and some
    # fall just below 0 without being outliers. The old rule (any direction <= 0 out)
    # dropped them; the gated one keeps every reply.
    n = 300
    reference = np.arange(n)
    rng = np.random.default_rng(3)
    updates = [
        ranks_from_order(np.argsort(reference + 20.0 * rng.normal(size=n), kind="stable"))
        for _ in range(10)
    ]
    direction = direction_agreement(np.stack(updates), reference)
    assert int((direction <= 0.0).sum()) >= 3

    outcome = filtered_vote([{"l": u} for u in updates], {"l": reference}, mads=5.0)

    assert bool(outcome.kept.all())
