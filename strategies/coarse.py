"""The Borda vote over coarse rankings: pure functions over bucket vectors.

With ``rank-bits = b`` a client sends, for each edge, the bucket of its rank
``floor(rank * 2**b / n)`` (:mod:`fedrank.protos.coarse`), not the rank. Bucket ``j``
stands for the ranks ``lo_j .. hi_j - 1`` (:func:`fedrank.protos.buckets.bucket_bounds`);
the vote gives each edge the sum over the clients of its buckets' mid-ranks
``(lo_j + hi_j - 1) / 2`` (the expected rank of an edge known only to lie in the bucket),
which is FRL's Borda count (arXiv 2110.04350, Sec. 3.2) with every rank replaced by its
bucket's midpoint; with ``2**b >= n`` every bucket holds one rank and it is Borda itself.

Coarse buckets tie many edges. Ties are broken by the reference ranking (the global
ranking sent this round), so edges the clients cannot tell apart keep their previous
order: a stable, deterministic tie-break that does not favour low edge indices.

The vote's smoothing across rounds (``vote-smoothing``) is the full vote's
(:func:`fedrank.strategies.ranking.anchored_ranks`): the reference ranking enters as
``anchor`` mean replies, added to each edge's mean mid-rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fedrank.protos.buckets import MAX_BUCKET_BITS, bucket_bounds
from fedrank.strategies.ranking import ranks_from_order
from fedrank.strategies.votes import RankVote

__all__ = ["bucket_midpoints", "coarse_borda_vote", "coarse_vote"]

Rankings = Mapping[str, np.ndarray]


def bucket_midpoints(n: int, bits: int) -> npt.NDArray[np.int64]:
    """Twice the mid-rank of each bucket, ``lo_j + hi_j - 1`` (integers, so sums are exact).

    An empty bucket (``n < 2**bits``) gets the value of its boundary; no valid reply uses it.
    """
    bounds = bucket_bounds(n, bits)
    midpoints: npt.NDArray[np.int64] = bounds[:-1] + bounds[1:] - 1
    return midpoints


def coarse_borda_vote(
    stacked: np.ndarray,
    *,
    bits: int,
    tie_break: np.ndarray | None = None,
    anchor: float = 0.0,
    reference: np.ndarray | None = None,
) -> npt.NDArray[np.int64]:
    """Global rank vector from stacked bucket vectors: Borda on bucket midpoints.

    Parameters
    ----------
    stacked : np.ndarray
        Shape (m clients, n edges), each row a valid bucket vector of ``bits`` bits.
    bits : int
        ``b``: the buckets' width in bits.
    tie_break : np.ndarray, optional
        A rank vector (the reference ranking) that orders edges with equal sums; None
        orders them by edge index (a stable sort).
    anchor : float
        Weight of ``reference`` in mean replies (the smoothing across rounds), ``>= 0``.
    reference : np.ndarray, optional
        The global rank vector sent this round; needed when ``anchor > 0``.

    Returns
    -------
    np.ndarray
        int64 rank vector (higher = more important); independent of client order.
    """
    if stacked.ndim != 2 or stacked.shape[0] == 0:
        raise ValueError(f"stacked: expected a non-empty (m, n) array, got shape {stacked.shape}")
    m, n = stacked.shape
    if not (math.isfinite(anchor) and anchor >= 0.0):
        raise ValueError(f"anchor: must be a finite number >= 0, got {anchor}")
    midpoints = bucket_midpoints(n, bits)
    # int64 sums cannot overflow: m * 2 n < 2**63 for any federation that fits in memory.
    votes: np.ndarray = midpoints[stacked].sum(axis=0, dtype=np.int64)
    if anchor:
        if reference is None or reference.shape != (n,):
            got = None if reference is None else reference.shape
            raise ValueError(f"reference: an anchor needs a rank vector of shape ({n},), got {got}")
        # The sums are of twice the mid-ranks: the reference weighs 2 * anchor * m.
        keys = reference.astype(np.float64)
        keys *= 2.0 * anchor * m
        keys += votes
        votes = keys
    if tie_break is None:
        order = np.argsort(votes, kind="stable")
    else:
        if tie_break.shape != (n,):
            raise ValueError(f"tie_break: expected shape ({n},), got {tie_break.shape}")
        order = np.lexsort((tie_break, votes))  # by votes, then by the reference's rank
    return ranks_from_order(order)


def coarse_vote(bits: int, *, tie_break: str = "reference") -> RankVote:
    """The ``FrlVote`` vote for coarse replies of ``bits`` bits (see the module docstring).

    Parameters
    ----------
    bits : int
        The run's ``rank-bits``.
    tie_break : {"reference", "index"}
        Equal sums ordered by the reference ranking (default) or by edge index.

    Returns
    -------
    RankVote
        ``(bucket replies, reference ranking, anchor) -> (new global ranking, 0 left
        out)``; the anchor is the vote's smoothing (``vote-smoothing x round``).
    """
    if not 1 <= bits <= MAX_BUCKET_BITS:
        raise ValueError(f"bits: expected 1..{MAX_BUCKET_BITS}, got {bits}")
    if tie_break not in ("reference", "index"):
        raise ValueError(f"tie_break: expected 'reference' or 'index', got {tie_break!r}")

    def vote(
        updates: Sequence[Rankings], reference: Rankings, anchor: float = 0.0
    ) -> tuple[dict[str, np.ndarray], int]:
        if not updates:
            raise ValueError("updates: need at least one client update to vote")
        state = {
            name: coarse_borda_vote(
                np.stack([u[name] for u in updates]),
                bits=bits,
                tie_break=reference[name] if tie_break == "reference" else None,
                anchor=anchor,
                reference=reference[name],
            )
            for name in updates[0]
        }
        return state, 0

    return vote
