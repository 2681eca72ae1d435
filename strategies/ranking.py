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


def top_k_mask(ranks: np.ndarray, k: float) -> np.ndarray:
    """Boolean mask of the top-``k`` fraction of a rank vector (the model's edges)."""
    n = ranks.shape[0]
    mask: np.ndarray = ranks >= n - max(1, round(k * n))
    return mask


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
