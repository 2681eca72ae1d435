"""Robust rank aggregation for Federated Rank Learning (FRL, arXiv 2110.04350).

Every client sends, per layer, a rank vector ``r`` (a permutation of ``0..n-1``;
``r[e]`` is the position of edge ``e`` when the layer's edges are sorted by score
ascending). The plain FRL vote (Borda) sums the positions over clients and ranks
the sums. One malicious client controls one term of that sum for every edge, so it
can move any edge's Borda sum by up to ``n - 1`` (from position 0 to ``n - 1``); a
handful of colluders sending the reversed ranking (FRL Sec. 5) or a ranking crafted
around the top-k mask boundary can thus decide which edges the mask keeps.

The votes here bound that influence coordinate-wise, as the robust statistics used
for float updates do (trimmed mean and median, Yin et al., arXiv 1803.01498):

* :func:`trimmed_borda_vote` drops, for every edge, the ``b`` largest and ``b``
  smallest positions before summing;
* :func:`median_vote` ranks edges by their median position.

Both return a global rank vector with the same convention as the plain vote.

Implementation note: the per-edge order statistics come from one ``np.sort`` along
the client axis, on ``int32`` when the positions fit. ``np.partition`` (linear per
edge instead of ``m log m``) was measured *slower* with numpy 2.4 for m in
{25, 100, 400}: its per-column selection overhead dominates at these small ``m``
(``python -m benchmarks.robust_vote --clients 25`` prints both).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "median_scores",
    "median_vote",
    "ranks_from_keys",
    "trim_count",
    "trimmed_borda_scores",
    "trimmed_borda_vote",
]

_INT64_LIMIT = 2**63 - 1


def ranks_from_keys(keys: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """Rank edges by ``keys`` ascending, ties broken by edge index.

    Parameters
    ----------
    keys : numpy.ndarray
        One integer key per edge (shape ``(n,)``).

    Returns
    -------
    numpy.ndarray
        ``int64`` rank vector: the inverse of the stable ascending argsort of ``keys``.
    """
    order = np.argsort(keys, kind="stable")
    ranks = np.empty(order.shape[0], dtype=np.int64)
    ranks[order] = np.arange(order.shape[0], dtype=np.int64)
    return ranks


def trim_count(num_clients: int, *, trim_fraction: float) -> int:
    """Number ``b`` of positions dropped at *each* end of every edge's votes.

    ``b = floor(trim_fraction * num_clients)``; since ``trim_fraction < 0.5`` at least
    one position per edge is always kept.

    Parameters
    ----------
    num_clients : int
        Number of rank vectors in the vote (``m >= 1``).
    trim_fraction : float
        Fraction trimmed at each end, in ``[0, 0.5)``.

    Returns
    -------
    int
        ``b``, with ``0 <= 2 * b < num_clients``.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients: must be at least 1, got {num_clients}")
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction: must lie in [0, 0.5), got {trim_fraction}")
    # The small epsilon keeps e.g. 0.3 * 10 = 3.0000000000000004 and 0.29 * 100
    # = 28.999999999999996 at the count a reader expects.
    return math.floor(trim_fraction * num_clients + 1e-9)


def _check_rankings(rankings: npt.NDArray[np.integer]) -> tuple[int, int]:
    """Validate a stacked rank array; return ``(m, n)``."""
    if rankings.ndim != 2:
        raise ValueError(f"rankings: expected shape (clients, edges), got {rankings.shape}")
    if not np.issubdtype(rankings.dtype, np.integer):
        raise ValueError(f"rankings: expected an integer array, got dtype {rankings.dtype}")
    m, n = rankings.shape
    if m < 1 or n < 1:
        raise ValueError(f"rankings: need at least one client and one edge, got {rankings.shape}")
    low, high = int(rankings.min()), int(rankings.max())
    if low < 0 or high >= n:
        raise ValueError(f"rankings: positions must lie in [0, {n}), got [{low}, {high}]")
    return m, n


def _sorted_positions(rankings: npt.NDArray[np.integer]) -> npt.NDArray[np.integer]:
    """Sort a validated ``(m, n)`` rank array along the client axis."""
    n = rankings.shape[1]
    # int32 halves the memory traffic of the sort, which dominates the vote's cost.
    compact = rankings.astype(np.int32) if n <= np.iinfo(np.int32).max else rankings
    return np.sort(compact, axis=0)


def trimmed_borda_scores(rankings: npt.NDArray[np.integer], *, trim: int) -> npt.NDArray[np.int64]:
    """Per-edge Borda sums after dropping the ``trim`` largest and smallest positions.

    Bound (what the tests check): let ``a <= trim`` of the ``m`` rows be arbitrary
    (malicious) and let ``g_(0) <= ... <= g_(m-a-1)`` be the benign positions of an
    edge. The ``j``-th smallest of all ``m`` positions lies in ``[g_(j-a), g_(j)]``
    (at least ``j + 1 - a`` of the ``j + 1`` smallest are benign; at least ``j + 1``
    positions are ``<= g_(j)``). Summing over the kept ``j = trim .. m-trim-1``::

        sum_j g_(j - a)  <=  score  <=  sum_j g_(j)

    so every kept position lies within the benign range ``[g_(0), g_(m-a-1)]``: the
    attackers can only pick *which* benign-range values survive, never push an edge
    beyond what the benign clients themselves voted.

    Parameters
    ----------
    rankings : numpy.ndarray
        Stacked rank vectors, shape ``(m, n)``, integer entries in ``[0, n)``.
    trim : int
        ``b``, positions dropped at each end, ``0 <= 2 * b < m``.

    Returns
    -------
    numpy.ndarray
        ``int64`` array of shape ``(n,)``: the sum of the ``m - 2b`` middle positions.
    """
    m, _ = _check_rankings(rankings)
    if not 0 <= 2 * trim < m:
        raise ValueError(f"trim: must satisfy 0 <= 2 * trim < clients ({m}), got {trim}")
    scores: npt.NDArray[np.int64] = _sorted_positions(rankings)[trim : m - trim].sum(
        axis=0, dtype=np.int64
    )
    return scores


def trimmed_borda_vote(
    rankings: npt.NDArray[np.integer], *, trim_fraction: float
) -> npt.NDArray[np.int64]:
    """Coordinate-wise trimmed-mean Borda vote.

    For every edge the ``b = trim_count(m, trim_fraction=...)`` largest and ``b``
    smallest positions are dropped and the rest summed; edges are ranked by that sum
    (ties by edge index). With ``trim_fraction = 0`` this is exactly the plain Borda
    vote.

    Resists: up to ``b`` colluders sending any rank vectors (the reverse-ranking
    attack of FRL, Sec. 5, random rankings, the mask-boundary attack of
    :mod:`fedrank.simulations.attacks.attacks`) in a bounded sense: every kept position of an
    edge lies within the benign clients' range of positions for it (see
    :func:`trimmed_borda_scores`), so one client's per-edge influence drops from
    ``n - 1`` to at most the spread of the benign positions. Not resisted: more than
    ``b`` attackers; attacks that stay inside the benign range (wide under non-IID
    data). Caveat: when all attackers sit at one extreme (reversal), symmetric
    trimming also drops ``b`` benign positions at the other end, a bias plain Borda
    does not have; Borda already dilutes a reversal (it adds a decreasing function
    of the benign estimate), so against that one attack plain Borda can do better.
    The trimmed vote pays off against attacks aimed at the mask boundary.

    Parameters
    ----------
    rankings : numpy.ndarray
        Stacked rank vectors, shape ``(m, n)``, integer entries in ``[0, n)``.
    trim_fraction : float
        Fraction trimmed at each end, in ``[0, 0.5)``.

    Returns
    -------
    numpy.ndarray
        The global rank vector (``int64`` permutation of ``0..n-1``).
    """
    m, _ = _check_rankings(rankings)
    trim = trim_count(m, trim_fraction=trim_fraction)
    middle = _sorted_positions(rankings)[trim : m - trim]
    return ranks_from_keys(middle.sum(axis=0, dtype=np.int64))


def median_scores(
    rankings: npt.NDArray[np.integer],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Twice the median position of every edge, and its Borda sum (for tie-breaks).

    Returns ``(median2, sums)``: ``median2 = s_(lo) + s_(hi)`` with
    ``lo = (m-1)//2``, ``hi = m//2`` over the sorted positions ``s`` of an edge (twice
    the median, kept integral for even ``m``), and ``sums`` the plain Borda sums.

    With ``a`` malicious rows and ``a < m/2`` (more precisely ``a <= lo``), both
    middle order statistics lie in ``[g_(j-a), g_(j)]`` of the benign positions ``g``
    (same argument as :func:`trimmed_borda_scores`), hence within the benign range.
    """
    m, _ = _check_rankings(rankings)
    ordered = _sorted_positions(rankings)
    median2 = ordered[(m - 1) // 2].astype(np.int64) + ordered[m // 2]
    sums = rankings.sum(axis=0, dtype=np.int64)
    return median2, sums


def median_vote(rankings: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """Coordinate-wise median vote.

    Edges are ranked by their median position; ties (frequent: medians are
    integers or half-integers) by mean position (the Borda sum), then by edge index.

    Resists: any attack by fewer than half of the clients in the sense that each
    edge's median stays within the benign clients' range of positions for it (see
    :func:`median_scores`); the breakdown point is 1/2, against ``b/m`` for the
    trimmed vote. Costs: it ignores all but one or two positions per edge, so with
    few, heterogeneous (non-IID) clients it is noisier than Borda; the mean-position
    tie-break lets the attackers' positions decide ties among equal medians (a
    bounded, second-order effect).

    Parameters
    ----------
    rankings : numpy.ndarray
        Stacked rank vectors, shape ``(m, n)``, integer entries in ``[0, n)``.

    Returns
    -------
    numpy.ndarray
        The global rank vector (``int64`` permutation of ``0..n-1``).
    """
    median2, sums = median_scores(rankings)  # validates the shape
    m, n = rankings.shape
    # One combined integer key sorts once; the stable sort then breaks the
    # remaining ties by edge index. Fall back to lexsort when it could overflow.
    sum_span = m * (n - 1) + 1
    if 2 * (n - 1) * sum_span + sum_span <= _INT64_LIMIT:
        return ranks_from_keys(median2 * sum_span + sums)
    order = np.lexsort((sums, median2))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n, dtype=np.int64)
    return ranks
