from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.client.adaptive_attacks import estimated_threshold, evade_agreement_filter
from fedrank.client.attacks import reverse_ranking_attack
from fedrank.strategies.filtered_vote import filtered_vote, spearman_to_reference

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


def test_an_omniscient_adaptive_reversal_passes_the_filter() -> None:
    rng = np.random.default_rng(5)
    reference = rng.permutation(500)
    benign = [perturbed(reference, rng, 0.1) for _ in range(8)]
    known = spearman_to_reference(np.stack(benign), reference)
    estimate = np.argsort(np.argsort(np.stack(benign).sum(axis=0), kind="stable"), kind="stable")
    aim = estimated_threshold(known, mads=3.0)
    attack = evade_agreement_filter(reference, reverse_ranking_attack(estimate), min_agreement=aim)
    updates = [{"l": r} for r in [*benign, attack, attack]]

    outcome = filtered_vote(updates, {"l": reference}, mads=3.0)

    assert outcome.kept[-2:].all()  # it stays just above the threshold ...
    assert rho(attack, reference) < known.min()  # ... below every benign reply


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        evade_agreement_filter(np.arange(3), np.arange(4), min_agreement=0.5)
    with pytest.raises(ValueError, match="mads"):
        estimated_threshold(np.array([0.9]), mads=0.0)
