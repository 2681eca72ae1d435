"""One-run audit: exact values where they exist, validity by enumeration, and it can fail."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from fedrank.errors import ConfigError
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.audit import (
    audit,
    audit_p_value,
    draw_inclusion,
    epsilon_lower_bound,
    guesses_from_scores,
)
from fedrank.privacy.randomness import RandomSource


@pytest.mark.parametrize(("guesses", "confidence"), [(10, 0.95), (100, 0.95), (1000, 0.99)])
def test_all_correct_without_delta_has_a_closed_form(guesses: int, confidence: float) -> None:
    # delta = 0, v = r: p = q^r with q = e^eps / (1 + e^eps), so the bound solves
    # q = (1 - confidence)^(1 / r): eps = log(q / (1 - q)).
    q = (1 - confidence) ** (1 / guesses)
    expected = math.log(q / (1 - q))

    bound = epsilon_lower_bound(
        canaries=guesses, guesses=guesses, correct=guesses, delta=0.0, confidence=confidence
    )

    assert bound == pytest.approx(expected, abs=1e-9)


def test_p_value_is_the_binomial_tail_plus_the_delta_term() -> None:
    # Hand-computed from the theorem: m = 20, r = 10, v = 8, eps = 1, delta = 1e-3.
    q = 1 / (1 + math.exp(-1.0))
    tail = sum(math.comb(10, k) * q**k * (1 - q) ** (10 - k) for k in range(8, 11))
    pmf = [math.comb(10, k) * q**k * (1 - q) ** (10 - k) for k in range(11)]
    alpha = max(sum(pmf[8 - i : 8]) / i for i in range(1, 9))

    p = audit_p_value(canaries=20, guesses=10, correct=8, epsilon=1.0, delta=1e-3)

    assert p == pytest.approx(tail + alpha * 1e-3 * 2 * 20, rel=1e-12)


@pytest.mark.parametrize(("epsilon", "delta"), [(0.5, 0.0), (1.0, 0.0), (1.0, 0.01), (2.0, 0.05)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_the_bound_is_valid_by_exhaustive_enumeration(
    epsilon: float, delta: float, confidence: float
) -> None:
    # A mechanism that is (epsilon, delta)-DP for every canary: with probability delta it
    # reveals the canary, else randomized response at epsilon. Each guess is right with
    # probability delta + (1 - delta) e^eps / (1 + e^eps), independently: enumerate every
    # number of right guesses and add up the probability that the audit claims more
    # than the truth. The theorem says at most 1 - confidence.
    m = r = 12
    right = delta + (1 - delta) / (1 + math.exp(-epsilon))
    false_claims = sum(
        stats.binom.pmf(v, r, right)
        for v in range(r + 1)
        if epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta, confidence=confidence)
        > epsilon
    )

    assert false_claims <= 1 - confidence


def test_p_value_grows_with_epsilon() -> None:
    # The bisection needs it.
    values = [
        audit_p_value(canaries=500, guesses=200, correct=150, epsilon=e, delta=1e-5)
        for e in np.linspace(0, 6, 61)
    ]

    assert all(b >= a for a, b in itertools.pairwise(values))


def test_guess_rule_takes_the_extremes_and_abstains_on_the_rest() -> None:
    scores = np.array([0.5, 3.0, -1.0, 2.0, 0.0, 3.0])

    guesses = guesses_from_scores(scores, k_positive=2, k_negative=1)

    # Highest two (index 1 and 5, tied, both in), lowest one (index 2) out.
    np.testing.assert_array_equal(guesses, [0, 1, -1, 0, 0, 1])
    assert guesses_from_scores(scores, k_positive=0, k_negative=0).tolist() == [0] * 6


def _gaussian_audit(sigma: float, seed: int) -> float:
    """A one-run audit of the Gaussian mechanism with 1,000 canaries in 1,000 coordinates.

    Canary i, if included, adds C = 1 to coordinate i of a sum released with
    N(0, sigma^2) noise: each canary is exactly the Gaussian mechanism with noise
    multiplier sigma. The auditor scores canary i by coordinate i.
    """
    canaries = 1000
    included = draw_inclusion(canaries, RandomSource.reproducible(seed))
    noise = RandomSource.reproducible(seed + 1).normal(canaries, std=sigma)
    released = included.astype(np.float64) + noise
    result = audit(released, included, rules=[(100, 100), (300, 300)], delta=1e-5)
    return result.epsilon_lower_bound


def test_the_audit_stays_below_the_claim_and_catches_missing_noise() -> None:
    sigma = 1.0
    claimed = compute_epsilon(history=[(sigma, 1.0, 1)], delta=1e-5, accountant="rdp")

    honest = [_gaussian_audit(sigma, seed) for seed in range(0, 10, 2)]
    broken = _gaussian_audit(1e-3, 100)  # the noise switched off, in effect

    assert max(honest) < claimed
    assert max(honest) > 0.5  # the audit does see the signal
    assert broken > claimed


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"canaries": 5, "guesses": 6, "correct": 1}, "correct"),
        ({"canaries": 5, "guesses": 3, "correct": -1}, "correct"),
        ({"canaries": 5, "guesses": 3, "correct": 1, "delta": 1.0}, "delta"),
        ({"canaries": 5, "guesses": 3, "correct": 1, "confidence": 1.0}, "confidence"),
    ],
)
def test_bad_counts_name_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"delta": 1e-5}
    args.update(kwargs)

    with pytest.raises(ConfigError) as caught:
        epsilon_lower_bound(**args)  # type: ignore[arg-type]

    assert caught.value.field == field


def test_audit_refuses_mismatched_inputs() -> None:
    with pytest.raises(ConfigError, match="included"):
        audit([1.0, 2.0], np.array([1, 0]), rules=[(1, 1)], delta=1e-5)
    with pytest.raises(ConfigError, match="k_positive"):
        guesses_from_scores([1.0, 2.0], k_positive=2, k_negative=1)
