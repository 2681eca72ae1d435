"""One-run privacy auditing: an empirical lower bound on epsilon from canaries.

Steinke, Nasr and Jagielski 2023, "Privacy Auditing with One (1) Training Run",
arXiv 2305.08846. m canaries are each included in training independently with
probability 1/2; after the one run, an auditor guesses for r of them whether they were
included (the rest it abstains on) and is right v times. If the run is
(epsilon, delta)-DP, v is stochastically dominated as their main theorem states: the
probability of v or more correct guesses is at most

    P[Binomial(r, e^eps / (1 + e^eps)) >= v]
        + 2 m delta max_{1 <= i <= v} P[v - i <= Binomial(r, e^eps / (1 + e^eps)) < v] / i

(:func:`audit_p_value`, the computation of their Appendix D). The largest epsilon this
bound rejects at the chosen confidence is the empirical lower bound
(:func:`epsilon_lower_bound`): the run is *not* (epsilon, delta)-DP for any smaller
epsilon, unless an event of probability at most 1 - confidence occurred.

Guesses come from per-canary scores (:func:`guesses_from_scores`: the k+ highest scores
guessed "included", the k- lowest "excluded"). Choosing k+ and k- after looking at the
scores voids the confidence; :func:`audit` with several (k+, k-) pairs splits the
confidence between them (Bonferroni).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrank.errors import ConfigError
from fedrank.privacy.randomness import RandomSource

# Above this, e^eps / (1 + e^eps) is 1 in float64: no larger lower bound is meaningful.
MAX_AUDIT_EPSILON = 36.0
_BISECTION_STEPS = 60


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    for name, value in (("canaries", canaries), ("guesses", guesses), ("correct", correct)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ConfigError(name, f"must be an integer >= 0, got {value!r}")
    if not correct <= guesses <= canaries:
        raise ConfigError(
            "correct",
            f"need correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}",
        )


def _check_probability(name: str, value: float, *, open_interval: bool) -> float:
    low_ok = value > 0 if open_interval else value >= 0
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and low_ok and value < 1 and math.isfinite(value)
    ):
        interval = "(0, 1)" if open_interval else "[0, 1)"
        raise ConfigError(name, f"must lie in {interval}, got {value!r}")
    return float(value)


def audit_p_value(
    *, canaries: int, guesses: int, correct: int, epsilon: float, delta: float
) -> float:
    """Probability of ``correct`` or more right guesses if the run is (epsilon, delta)-DP.

    Parameters
    ----------
    canaries : int
        m, canaries each included independently with probability 1/2.
    guesses : int
        r, guesses made (abstentions excluded), <= m.
    correct : int
        v, right guesses, <= r.
    epsilon : float
        >= 0.
    delta : float
        In [0, 1).

    Returns
    -------
    float
        An upper bound on that probability (at most 1): a p-value for the hypothesis
        "the run is (epsilon, delta)-DP".
    """
    _check_counts(canaries, guesses, correct)
    if isinstance(epsilon, bool) or not (
        isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon >= 0
    ):
        raise ConfigError("epsilon", f"must be a finite number >= 0, got {epsilon!r}")
    delta = _check_probability("delta", delta, open_interval=False)
    # Imported here: every DP-SGD client imports this module (for the canaries' coins),
    # and scipy.stats costs about a second of start-up that only an audit needs.
    from scipy import stats

    q = 1.0 / (1.0 + math.exp(-epsilon))  # the accuracy of epsilon-DP randomized response
    tail = float(stats.binom.sf(correct - 1, guesses, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or correct == 0:
        return min(tail, 1.0)
    # P[v - i <= Binomial < v] for i = 1..v, as running sums of the pmf below v.
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q)
    windows = np.cumsum(below) / np.arange(1, correct + 1)
    return min(tail + float(windows.max()) * delta * 2 * canaries, 1.0)


def epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest epsilon that ``correct`` of ``guesses`` right rejects at ``confidence``.

    Bisection on epsilon in [0, :data:`MAX_AUDIT_EPSILON`] keeping
    ``audit_p_value(epsilon) < 1 - confidence`` at the lower end (as the paper's
    Appendix D does). Returns 0 when even epsilon = 0 is not rejected.
    """
    _check_counts(canaries, guesses, correct)
    delta = _check_probability("delta", delta, open_interval=False)
    alpha = 1.0 - _check_probability("confidence", confidence, open_interval=True)

    def rejected(eps: float) -> bool:
        p = audit_p_value(
            canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta
        )
        return p < alpha

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, MAX_AUDIT_EPSILON
    if rejected(high):
        return high
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if rejected(middle) else (low, middle)
    return low


def draw_inclusion(canaries: int, source: RandomSource) -> npt.NDArray[np.bool_]:
    """Which canaries go into training: each independently with probability 1/2.

    The auditor's own randomness (the theorem needs it independent of everything the
    run does); keep it secret from whatever is audited.
    """
    if isinstance(canaries, bool) or not isinstance(canaries, int) or canaries < 1:
        raise ConfigError("canaries", f"must be an integer >= 1, got {canaries!r}")
    return source.bernoulli(canaries, 0.5)


def guesses_from_scores(
    scores: npt.ArrayLike, *, k_positive: int, k_negative: int
) -> npt.NDArray[np.int8]:
    """Guesses from per-canary scores (higher: more likely included).

    +1 ("included") for the ``k_positive`` highest scores, -1 ("excluded") for the
    ``k_negative`` lowest, 0 (abstain) for the rest. Ties are broken by canary index,
    so the guesses depend on nothing but the scores.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ConfigError("scores", "must be a 1-D array of finite numbers")
    n = values.size
    for name, k in (("k_positive", k_positive), ("k_negative", k_negative)):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(name, f"must be an integer >= 0, got {k!r}")
    if k_positive + k_negative > n:
        raise ConfigError(
            "k_positive", f"k_positive + k_negative = {k_positive + k_negative} > {n} canaries"
        )
    order = np.argsort(values, kind="stable")  # ascending; equal scores by index
    guesses = np.zeros(n, dtype=np.int8)
    guesses[order[:k_negative]] = -1
    if k_positive:
        guesses[order[n - k_positive :]] = 1
    return guesses


@dataclass(frozen=True)
class AuditResult:
    """What one audit found.

    Attributes
    ----------
    epsilon_lower_bound : float
        The run is not (epsilon, delta)-DP for any smaller epsilon (at ``confidence``).
    canaries, guesses, correct : int
        m, r and v.
    k_positive, k_negative : int
        The guess rule that gave the bound.
    delta, confidence : float
        As asked.
    """

    epsilon_lower_bound: float
    canaries: int
    guesses: int
    correct: int
    k_positive: int
    k_negative: int
    delta: float
    confidence: float


def audit(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    *,
    rules: Sequence[tuple[int, int]],
    delta: float,
    confidence: float = 0.95,
) -> AuditResult:
    """The empirical epsilon lower bound of a run from its canaries' scores.

    Parameters
    ----------
    scores : array_like
        One score per canary, higher meaning "more likely included".
    included : array_like
        Which canaries were included (from :func:`draw_inclusion`).
    rules : Sequence[tuple[int, int]]
        The (k_positive, k_negative) guess rules to try, fixed before the scores were
        seen; the confidence is split evenly between them (Bonferroni), and the best
        bound is returned.
    delta : float
        The delta the claim is made at.
    confidence : float
        Probability, over the inclusion draw, that the bound is valid; in (0, 1).
    """
    truth = np.asarray(included)
    values = np.asarray(scores, dtype=np.float64)
    if truth.dtype != np.bool_ or truth.shape != values.shape:
        raise ConfigError("included", "must be a boolean array with one entry per score")
    if not rules:
        raise ConfigError("rules", "give at least one (k_positive, k_negative) rule")
    confidence = _check_probability("confidence", confidence, open_interval=True)
    each = 1.0 - (1.0 - confidence) / len(rules)
    results = []
    for k_positive, k_negative in rules:
        guesses = guesses_from_scores(values, k_positive=k_positive, k_negative=k_negative)
        made = int(np.count_nonzero(guesses))
        right = int(
            np.count_nonzero((guesses == 1) & truth) + np.count_nonzero((guesses == -1) & ~truth)
        )
        bound = epsilon_lower_bound(
            canaries=values.size, guesses=made, correct=right, delta=delta, confidence=each
        )
        results.append(
            AuditResult(
                epsilon_lower_bound=bound,
                canaries=values.size,
                guesses=made,
                correct=right,
                k_positive=k_positive,
                k_negative=k_negative,
                delta=float(delta),
                confidence=confidence,
            )
        )
    # The first of the best: ties go to the earlier rule.
    return max(results, key=lambda r: r.epsilon_lower_bound)
