from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.simulations.attacks.adaptive import (
    DIRECTION_MARGIN,
    estimated_threshold,
    evade_agreement_filter,
    evade_filters,
)
from fedrank.simulations.attacks.attacks import reverse_ranking_attack
from fedrank.strategies.filtered_vote import (
    direction_agreement,
    filtered_vote,
    spearman_to_reference,
)

IntArray = npt.NDArray[np.int64]


def rho(a: IntArray, b: IntArray) -> float:
    return float(spearman_to_reference(a[None, :], b)[0])


def perturbed(reference: IntArray, rng: np.random.Generator, noise: float) -> IntArray:
    scores = reference + rng.normal(0.0, noise * reference.shape[0], size=reference.shape[0])
    ranks = np.empty(reference.shape[0], dtype=np.int64)
    ranks[np.argsort(scores, kind="stable")] = np.arange(reference.shape[0])
    return ranks


@settings(max_examples=50)
@given(
    n=st.integers(2, 200),
    seed=st.integers(0, 2**16),
    aim=st.floats(-1.0, 1.0),
)
def test_evasion_keeps_the_aimed_agreement_and_is_a_permutation(
    n: int, seed: int, aim: float
) -> None:
    rng = np.random.default_rng(seed)
    reference, target = rng.permutation(n), rng.permutation(n)

    attack = evade_agreement_filter(reference, target, min_agreement=aim)

    assert np.array_equal(np.sort(attack), np.arange(n))
    assert rho(attack, reference) >= aim


def test_evasion_goes_as_far_towards_the_target_as_the_aim_allows() -> None:
    rng = np.random.default_rng(3)
    reference = rng.permutation(1000)
    target = 999 - perturbed(reference, rng, 0.1)  # the reverse of a benign-like estimate

    near = evade_agreement_filter(reference, target, min_agreement=0.95)
    far = evade_agreement_filter(reference, target, min_agreement=0.5)

    assert 0.95 <= rho(near, reference) < 0.96
    assert 0.5 <= rho(far, reference) < 0.52
    assert rho(far, target) > rho(near, target) > rho(reference, target)


def test_a_target_that_already_clears_the_aim_is_sent_unchanged() -> None:
    reference = np.arange(50)
    target = reference.copy()
    target[[0, 1]] = target[[1, 0]]
    np.testing.assert_array_equal(
        evade_agreement_filter(reference, target, min_agreement=0.9), target
    )


def test_threshold_estimate_from_one_value_is_that_value() -> None:
    assert estimated_threshold(np.array([0.97]), mads=3.0) == 0.97


def benign_with_learning(
    seed: int, n: int = 500, clients: int = 8
) -> tuple[IntArray, list[IntArray]]:
    rng = np.random.default_rng(seed)
    reference = rng.permutation(n)
    learning = rng.normal(0.0, 0.1 * n, size=n)
    scores = [reference + learning + rng.normal(0.0, 0.15 * n, size=n) for _ in range(clients)]
    return reference, [perturbed(s.astype(np.int64), rng, 0.0) for s in scores]


def test_a_reversal_that_evades_only_the_agreement_test_is_caught_by_the_direction_test() -> None:
    reference, benign = benign_with_learning(5)
    known = spearman_to_reference(np.stack(benign), reference)
    estimate = np.argsort(np.argsort(np.stack(benign).sum(axis=0), kind="stable"), kind="stable")
    aim = estimated_threshold(known, mads=3.0)
    attack = evade_agreement_filter(reference, reverse_ranking_attack(estimate), min_agreement=aim)
    updates = [{"l": r} for r in [*benign, attack, attack]]

    outcome = filtered_vote(updates, {"l": reference}, mads=3.0)

    assert rho(attack, reference) >= aim  # it clears the agreement test ...
    assert not outcome.kept[-2:].any()  # ... but points against the benign replies


def test_an_omniscient_attacker_that_knows_both_tests_passes_but_no_longer_reverses() -> None:
    reference, benign = benign_with_learning(6)
    stacked = np.stack(benign)
    estimate = np.argsort(np.argsort(stacked.sum(axis=0), kind="stable"), kind="stable")
    attack = evade_filters(
        reference,
        reverse_ranking_attack(estimate),
        estimate,
        stacked,
        min_agreement=estimated_threshold(spearman_to_reference(stacked, reference), mads=3.0),
        min_direction=DIRECTION_MARGIN,
    )
    updates = [{"l": r} for r in [*benign, attack, attack]]

    outcome = filtered_vote(updates, {"l": reference}, mads=3.0)

    assert np.array_equal(np.sort(attack), np.arange(500))
    assert outcome.kept[-2:].all()
    assert direction_agreement(np.stack([*benign, attack]), reference)[-1] > 0


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 120), seed=st.integers(0, 2**16), aim=st.floats(-1.0, 1.0))
def test_evading_both_tests_gives_a_permutation_that_clears_the_agreement_aim(
    n: int, seed: int, aim: float
) -> None:
    rng = np.random.default_rng(seed)
    reference, target = rng.permutation(n), rng.permutation(n)
    known = np.stack([rng.permutation(n) for _ in range(3)])
    estimate = np.argsort(np.argsort(known.sum(axis=0), kind="stable"), kind="stable")

    attack = evade_filters(reference, target, estimate, known, min_agreement=aim, min_direction=0.0)

    assert np.array_equal(np.sort(attack), np.arange(n))
    assert rho(attack, reference) >= aim or np.array_equal(attack, reference)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        evade_agreement_filter(np.arange(3), np.arange(4), min_agreement=0.5)
    with pytest.raises(ValueError, match="mads"):
        estimated_threshold(np.array([0.9]), mads=0.0)
