"""What the filtered vote reads off the replies' displacements from the reference.

Every reply ``r`` of a layer moved the reference ranking ``g`` by ``r - g``. The
filtered vote (:mod:`fedrank.strategies.filtered_vote`) judges a reply by two
statistics of these displacements: its Spearman correlation with ``g`` (from
``||r - g||^2``, Spearman 1904) and the median cosine of its displacement with the
others'. Both come out of one ``(m, m)`` Gram matrix of the displacements, computed
in one pass over the replies that can also add up their Borda sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "clip_scales",
    "direction_from_gram",
    "displacement_gram",
    "rho_from_squares",
    "spearman_from_gram",
]

FloatArray = npt.NDArray[np.float64]

# Edges per block of the pass over a layer's replies (measured best of 4k-128k on
# 10 x 1.2M edges): large enough that numpy's per-call cost is small, small enough
# that a block of the reference and of the sums is still cached when the next reply
# comes.
_BLOCK = 65_536


def rho_from_squares(squares: npt.NDArray[np.floating], n: int) -> FloatArray:
    """Spearman's rho of two permutations of ``0..n-1`` from ``sum (r - g)^2``."""
    if n < 2:
        return np.ones(squares.shape[0], dtype=np.float64)
    rho: FloatArray = 1.0 - 6.0 * np.asarray(squares, dtype=np.float64) / (n * (n * n - 1.0))
    return rho


def displacement_gram(
    rankings: Sequence[npt.NDArray[np.integer]],
    reference: npt.NDArray[np.integer],
    *,
    sums: npt.NDArray[np.int64] | None = None,
) -> FloatArray:
    """Gram matrix ``G[i, j] = (r_i - g) . (r_j - g)`` of the replies' displacements.

    Everything the vote's tests need comes out of this one ``(m, m)`` matrix: the
    Spearman agreement with ``g`` (the diagonal, :func:`spearman_from_gram`), the
    cosines between displacements (:func:`direction_from_gram`) and their norms. It
    costs one pass over the replies (each written once as ``float32`` displacements,
    exact below ``2**24`` edges) and one matrix product, instead of one pass per
    statistic; measured relative error against exact integer sums about ``2e-6``
    (1.2M edges), far below any threshold the vote sets.

    Reading the replies is most of the cost of both the displacements and the Borda
    sums, so with ``sums`` given they share that read, block by block. A block's
    displacement is taken in ``int32`` (exact: ``|r - g| < n``) and converted to
    ``float32`` from there, which numpy does about three times as fast as from
    ``int64``; the conversion of an exact integer is correctly rounded from either,
    so the values are those of a whole-row ``int64`` subtraction. The Gram matrix is
    one product of the whole ``(m, n)`` matrix, not a sum over blocks: its float
    rounding, hence every decision the vote takes on it, does not depend on the
    blocks.

    Parameters
    ----------
    rankings : sequence of numpy.ndarray
        ``m`` rank vectors of shape ``(n,)``, entries in ``[0, n)`` (not stacked: no
        extra copy).
    reference : numpy.ndarray
        Shape ``(n,)``, the global ranking sent this round.
    sums : numpy.ndarray, optional
        ``int64`` of shape ``(n,)``: every reply's positions are added into it, as
        :func:`~fedrank.strategies.ranking.borda_sums` adds them.

    Returns
    -------
    numpy.ndarray
        ``float64`` of shape ``(m, m)``, symmetric, non-negative diagonal.
    """
    if reference.ndim != 1 or any(r.shape != reference.shape for r in rankings):
        raise ValueError(
            f"rankings, reference: expected rank vectors of shape {reference.shape}, "
            f"got {[r.shape for r in rankings]}"
        )
    if sums is not None and (sums.shape != reference.shape or sums.dtype != np.int64):
        raise ValueError(
            f"sums: expected int64 of shape {reference.shape}, got {sums.dtype} {sums.shape}"
        )
    n = reference.shape[0]
    exact = np.int32 if n <= np.iinfo(np.int32).max else np.int64
    displacement = np.empty((len(rankings), n), dtype=np.float32)
    ranks_block = np.empty(min(n, _BLOCK), dtype=exact)
    g_block = np.empty(min(n, _BLOCK), dtype=exact)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        g = g_block[: stop - start]
        np.copyto(g, reference[start:stop], casting="unsafe")  # positions < n: exact
        for row, ranks in zip(displacement, rankings, strict=True):
            block = ranks[start:stop]
            r = ranks_block[: stop - start]
            np.copyto(r, block, casting="unsafe")
            np.subtract(r, g, out=row[start:stop], casting="unsafe")
            if sums is not None:
                total = sums[start:stop]
                np.add(total, block, out=total, casting="unsafe")  # as borda_sums adds
    gram: FloatArray = (displacement @ displacement.T).astype(np.float64)
    return gram


def spearman_from_gram(gram: npt.NDArray[np.floating], n: int) -> FloatArray:
    """Every reply's Spearman correlation with ``g``, from :func:`displacement_gram`."""
    return rho_from_squares(np.diagonal(gram), n)


def direction_from_gram(gram: npt.NDArray[np.floating]) -> FloatArray:
    """Median cosine of every reply's displacement with the others', from the Gram matrix.

    See :func:`~fedrank.strategies.filtered_vote.direction_agreement`; a zero
    displacement has cosine 0 with everything and a lone reply scores 1.
    """
    m = gram.shape[0]
    if m == 1:
        return np.ones(1, dtype=np.float64)
    norms = np.sqrt(np.maximum(np.diagonal(gram), 0.0))
    outer = norms[:, None] * norms[None, :]
    pairwise = np.clip(
        np.divide(gram, outer, out=np.zeros((m, m), dtype=np.float64), where=outer > 0.0),
        -1.0,
        1.0,
    )
    others = pairwise[~np.eye(m, dtype=np.bool_)].reshape(m, m - 1)
    agreement: FloatArray = np.median(others, axis=1)
    return agreement


def clip_scales(rho: npt.NDArray[np.floating], threshold: float) -> FloatArray:
    """How far to shrink each reply's displacement ``r - g`` to sit at ``threshold``.

    Spearman's rho of a reply is ``1 - 6 ||r - g||^2 / (n (n^2 - 1))``, so
    ``g + c (r - g)`` with ``c = sqrt((1 - threshold) / (1 - rho))`` is exactly as far
    from ``g`` as a reply at the threshold. Replies at or above it keep ``c = 1``.
    """
    values = np.asarray(rho, dtype=np.float64)
    far = values < threshold
    scale: FloatArray = np.ones_like(values)
    scale[far] = np.sqrt((1.0 - threshold) / (1.0 - values[far]))
    return scale
