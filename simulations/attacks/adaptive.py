"""Adaptive ranking attacks: as harmful as possible while passing the filtered vote.

The filtered vote (:mod:`fedrank.strategies.filtered_vote`) drops a reply whose
Spearman correlation with the round's global ranking ``g`` lies more than ``c``
robust standard deviations below the median of the round's replies. An attacker who
knows that rule and ``g`` (every client receives ``g``) can aim just above the
threshold: it estimates the threshold from the benign rankings it knows (the
colluders' own honest ones, or all benign ones for an omniscient attacker), and
sends the ranking closest to its harmful target that still clears it.

"Closest" is taken along the straight line between ``g`` and the target in
position space: ``s(lambda) = (1 - lambda) g + lambda t``, ranked; the attack is the
ranking of the largest ``lambda`` whose correlation with ``g`` is still at least the
estimate (bisection). Two targets:

- the reverse of the benign estimate (FRL's attack, arXiv 2110.04350, Sec. 5): along
  the line the ranking turns into ``g`` minus an amplified copy of the benign update,
  the ranking analogue of a scaled sign flip;
- the mask-boundary attack (:func:`fedrank.simulations.attacks.attacks.mask_boundary_attack`):
  edges around the top-k boundary pushed towards the wrong side.

The vote also sets aside a reply whose displacement ``r - g`` points against the
other replies' (median cosine at most 0). Against that test the attacker bends its
target towards its benign estimate until the reply points with the benign replies
it knows (:func:`evade_filters`), then applies the line search above. The reversal
alone, which was the strongest attack on the agreement test (MLP, 20% attackers:
-3.3 points), has nothing left that passes: what passes is its benign estimate.
The same reversal that ignores the direction test is still an attack one can run
(:func:`evade_agreement_filter` alone); the direction test drops it.

This follows the adaptive-attack methodology of Shejwalkar & Houmansadr (NDSS 2021,
"Manipulating the Byzantine"): maximise the deviation subject to staying inside what
the defence accepts, here solved on the defence's own statistic.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from fedrank.strategies.filtered_vote import MAD_TO_SIGMA, cosines, spearman_to_reference

IntArray = npt.NDArray[np.int64]

# How far inside the threshold the attacker aims, in robust standard deviations:
# the attackers' own replies shift the median and MAD a little.
SAFETY_MADS = 0.5
# The median cosine with the known benign displacements the attacker keeps: the
# vote requires more than 0 with *all* the others, which the attacker only estimates.
DIRECTION_MARGIN = 0.05


def estimated_threshold(
    known_agreement: npt.NDArray[np.floating], *, mads: float, safety: float = SAFETY_MADS
) -> float:
    """The attacker's aim: ``median - (mads - safety) * 1.4826 * MAD`` of what it knows.

    Knows: the correlations with ``g`` of the benign rankings it holds (one value:
    the aim is that value, a typical benign client's agreement).
    """
    values = np.asarray(known_agreement, dtype=np.float64)
    if values.ndim != 1 or values.shape[0] == 0:
        raise ValueError(f"known_agreement: expected a non-empty 1-D array, got {values.shape}")
    if not (math.isfinite(mads) and mads > 0.0) or not 0.0 <= safety <= mads:
        raise ValueError(
            f"mads, safety: need mads > 0 and 0 <= safety <= mads, got {mads}, {safety}"
        )
    median = float(np.median(values))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    return median - (mads - safety) * spread


def _ranks(scores: npt.NDArray[np.float64]) -> IntArray:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(order.shape[0], dtype=np.int64)
    ranks[order] = np.arange(order.shape[0], dtype=np.int64)
    return ranks


def evade_agreement_filter(
    reference: npt.NDArray[np.integer],
    target: npt.NDArray[np.integer],
    *,
    min_agreement: float,
    iterations: int = 24,
) -> IntArray:
    """The ranking nearest ``target`` on the line from ``reference`` that keeps
    ``spearman(result, reference) >= min_agreement``.

    Knows: the reference (the global ranking, sent to every client) and its aim
    (:func:`estimated_threshold`). Returns ``target`` itself when it already clears
    the aim, ``reference`` when nothing else does (``min_agreement > 1``).

    Parameters
    ----------
    reference, target : numpy.ndarray
        Rank vectors of the same length.
    min_agreement : float
        The correlation the result must keep with ``reference``.
    iterations : int
        Bisection steps on ``lambda`` (24: ``lambda`` to within 6e-8).
    """
    if reference.shape != target.shape or reference.ndim != 1:
        raise ValueError(
            f"reference, target: need equal 1-D shapes, got {reference.shape}, {target.shape}"
        )
    g = reference.astype(np.float64)
    t = target.astype(np.float64)

    def agreement(ranks: IntArray) -> float:
        return float(spearman_to_reference(ranks[None, :], reference)[0])

    best = reference.astype(np.int64)
    if agreement(best) < min_agreement:
        return best
    if agreement(target.astype(np.int64)) >= min_agreement:
        return target.astype(np.int64)
    low, high = 0.0, 1.0  # invariant: the ranking at ``low`` clears the aim
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        candidate = _ranks((1.0 - middle) * g + middle * t)
        if agreement(candidate) >= min_agreement:
            low, best = middle, candidate
        else:
            high = middle
    return best


def evade_filters(
    reference: npt.NDArray[np.integer],
    target: npt.NDArray[np.integer],
    estimate: npt.NDArray[np.integer],
    known: npt.NDArray[np.integer],
    *,
    min_agreement: float,
    min_direction: float,
    iterations: int = 6,
) -> IntArray:
    """The ranking nearest ``target`` that clears both tests of the filtered vote.

    The vote also drops a reply whose displacement ``r - g`` points away from the
    other replies' (:func:`~fedrank.strategies.filtered_vote.direction_agreement`).
    The attacker bends its target towards its benign estimate ``e`` until it points
    the right way: ``t(theta)``, the ranking of ``(1 - theta) t + theta e``, with the
    least ``theta`` (bisection, ``iterations`` steps) whose agreement-limited ranking
    (:func:`evade_agreement_filter`) has a median cosine of at least ``min_direction``
    with the displacements of the benign replies it knows (``known``, shape ``(k, n)``).

    Knows: the reference, its benign estimate, the benign replies it knows, and its
    two aims (:func:`estimated_threshold`). Against the
    reversal this leaves little: mixing ``reverse(e)`` with ``e`` in position space
    is ``reverse(e)`` for ``theta < 1/2`` and ``e`` above, so what passes is the
    estimate itself, moved no further than the agreement aim allows.
    """
    if not reference.shape == target.shape == estimate.shape == known.shape[1:]:
        raise ValueError(
            f"reference, target, estimate, known: need shapes (n,) x 3 and (k, n), got "
            f"{reference.shape}, {target.shape}, {estimate.shape}, {known.shape}"
        )
    t, e = target.astype(np.float64), estimate.astype(np.float64)
    known_displacement = known.astype(np.float64) - reference.astype(np.float64)

    def attempt(theta: float) -> tuple[IntArray, bool]:
        bent = _ranks((1.0 - theta) * t + theta * e)
        ranks = evade_agreement_filter(reference, bent, min_agreement=min_agreement, iterations=16)
        displacement = (ranks - reference.astype(np.int64)).astype(np.float64)
        agreement = float(np.median(cosines(known_displacement, displacement)))
        return ranks, agreement >= min_direction

    best, passes = attempt(0.0)
    if passes:
        return best
    best, passes = attempt(1.0)
    if not passes:  # even the estimate fails the aim: send the reference, as a stale client
        return reference.astype(np.int64)
    low, high = 0.0, 1.0  # invariant: ``high`` passes
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        candidate, passes = attempt(middle)
        if passes:
            high, best = middle, candidate
        else:
            low = middle
    return best
