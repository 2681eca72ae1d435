"""Rank aggregation for FRL: pure functions over rank vectors.

A rank vector for a layer of ``n`` edges is an integer permutation of ``0..n-1``:
``ranks[e]`` is edge ``e``'s position in ascending score order (FRL, arXiv
2110.04350, Sec. 3.2; higher = more important). The server's Borda vote gives
each edge the sum of its positions over the clients and ranks the sums.

Clients send rank vectors rather than the argsort ("edge at each position") so
the vote is one sum over the stacked vectors plus one sort: no per-client
inversion, which is what makes the authors' argsort-of-argsort vote slow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedrank.errors import InvalidUpdate


def borda_vote(stacked: np.ndarray) -> np.ndarray:
    """Global rank vector from stacked client rank vectors (Borda count).

    Parameters
    ----------
    stacked : np.ndarray
        Shape (m clients, n edges); each row a rank vector.

    Returns
    -------
    np.ndarray
        int64 rank vector of the sums of positions; ties go to the lower edge
        index (stable sort), so the result is independent of client order.
    """
    if stacked.ndim != 2 or stacked.shape[0] == 0:
        raise ValueError(f"stacked: expected a non-empty (m, n) array, got shape {stacked.shape}")
    # int64 sums cannot overflow: m * n**2 < 2**63 for any layer that fits in memory.
    votes = stacked.sum(axis=0, dtype=np.int64)
    return ranks_from_order(np.argsort(votes, kind="stable"))


def ranks_from_order(order: np.ndarray) -> np.ndarray:
    """Invert an ascending order (argsort result) into a rank vector."""
    ranks = np.empty(order.shape[0], dtype=np.int64)
    ranks[order] = np.arange(order.shape[0], dtype=np.int64)
    return ranks


def borda_sums(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Per-edge sum of positions over rank vectors of one layer, without stacking them.

    Equal to ``np.stack(rows).sum(axis=0)`` in int64, minus the ``(m, n)`` copy.
    """
    if not rows:
        raise ValueError("rows: need at least one rank vector")
    votes = np.zeros(rows[0].shape, dtype=np.int64)
    for row in rows:
        np.add(votes, row, out=votes, casting="unsafe")  # int32 or int64 positions
    return votes


def vote_layers(updates: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Borda vote of every layer over the clients' rank-vector updates."""
    if not updates:
        raise ValueError("updates: need at least one client update to vote")
    return {
        name: ranks_from_order(np.argsort(borda_sums([u[name] for u in updates]), kind="stable"))
        for name in updates[0]
    }


def anchored_ranks(
    sums: np.ndarray, total_weight: float, reference: np.ndarray | None, *, anchor: float
) -> np.ndarray:
    """Rank the mean positions ``sums / total_weight`` after adding ``anchor`` times ``reference``.

    The vote's smoothing across rounds: the global ranking sent this round enters the
    vote as ``anchor`` mean replies, so the new ranking moves only a fraction ``1 / (1 +
    anchor)`` of the way the replies point (a server step size in rank space, as FedAvg's
    server learning rate or the FedOpt family, Reddi et al. 2021, arXiv 2003.00295).
    Added to the *mean* position, not to its rank: the mean of replies that disagree
    (heterogeneous clients) is compressed towards the middle, so the reference weighs
    more in such a round than in one where the replies agree.

    Parameters
    ----------
    sums : numpy.ndarray
        Per-edge (weighted) sums of positions, shape ``(n,)``.
    total_weight : float
        The total weight behind ``sums`` (number of replies for plain Borda), > 0.
    reference : numpy.ndarray or None
        The global rank vector sent this round, shape ``(n,)``; only needed when
        ``anchor > 0``.
    anchor : float
        Weight of ``reference`` in mean replies, ``>= 0``; 0 ranks ``sums`` alone.

    Returns
    -------
    numpy.ndarray
        int64 rank vector; ties go to the lower edge index. The keys are computed
        element by element (``sums + anchor * total_weight * reference``), so equal
        inputs in any reply order give the same ranks.
    """
    if not (math.isfinite(anchor) and anchor >= 0.0):
        raise ValueError(f"anchor: must be a finite number >= 0, got {anchor}")
    if not (math.isfinite(total_weight) and total_weight > 0.0):
        raise ValueError(f"total_weight: must be a positive number, got {total_weight}")
    if sums.ndim != 1:
        raise ValueError(f"sums: expected a 1-D array, got shape {sums.shape}")
    if anchor == 0.0:
        return ranks_from_order(np.argsort(sums, kind="stable"))
    if reference is None or reference.shape != sums.shape:
        got = None if reference is None else reference.shape
        raise ValueError(
            f"reference: an anchor needs a rank vector of shape {sums.shape}, got {got}"
        )
    keys = reference.astype(np.float64)
    keys *= anchor * total_weight
    keys += sums
    return ranks_from_order(np.argsort(keys, kind="stable"))


def check_rank_vector(name: str, ranks: np.ndarray, n: int) -> np.ndarray:
    """Return ``ranks`` as int64 if it is a permutation of ``0..n-1``; else raise.

    Raises
    ------
    InvalidUpdate
        ``bad_length``, ``bad_dtype`` or ``not_permutation``, naming the layer.
    """
    if ranks.ndim != 1 or ranks.shape[0] != n:
        raise InvalidUpdate(
            "bad_length", f"layer {name}: expected {n} ranks, got shape {ranks.shape}"
        )
    if not np.issubdtype(ranks.dtype, np.integer):
        raise InvalidUpdate("bad_dtype", f"layer {name}: ranks must be integers, got {ranks.dtype}")
    ranks = np.asarray(ranks, dtype=np.int64)
    lo, hi = int(ranks.min()), int(ranks.max())
    if lo < 0 or hi >= n:
        raise InvalidUpdate(
            "not_permutation", f"layer {name}: ranks must lie in [0, {n - 1}], got [{lo}, {hi}]"
        )
    counts = np.bincount(ranks, minlength=n)
    if counts.max() != 1:
        dup = int(np.argmax(counts))
        raise InvalidUpdate(
            "not_permutation", f"layer {name}: rank {dup} appears {int(counts[dup])} times"
        )
    return ranks
