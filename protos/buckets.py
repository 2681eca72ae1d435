"""Rank buckets of coarse FRL rankings: each edge's rank reduced to ``b`` bits.

A coarse ranking sends, for each edge of a layer of ``n`` edges, the bucket
``floor(rank * 2**b / n)`` of its rank instead of the rank itself (``b`` bits an edge
instead of ``ceil(log2 n)``); the buckets are bit-packed like rank vectors
(:func:`fedrank.protos.packing.pack_values`). A valid bucket vector holds exactly each
bucket's share of the edges.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_BUCKET_BITS", "bucket_bounds", "bucket_problem", "rank_buckets"]

MAX_BUCKET_BITS = 16
"""The most bits a coarse ranking spends per edge (``rank-bits``)."""


def _check_bucket_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise ValueError(f"bits: expected an int, got {bits!r}")
    if not 1 <= bits <= MAX_BUCKET_BITS:
        raise ValueError(f"bits: expected 1..{MAX_BUCKET_BITS}, got {bits}")
    return int(bits)


def bucket_bounds(n: int, bits: int) -> npt.NDArray[np.int64]:
    """Where each of the ``2**bits`` buckets of ``n`` ranks starts, and ``n``.

    Bucket ``j`` holds the ranks ``r`` with ``floor(r * 2**bits / n) == j``, which are
    exactly ``bounds[j] <= r < bounds[j + 1]`` with ``bounds[j] = ceil(j * n / 2**bits)``.
    When ``n < 2**bits`` some buckets are empty.

    Returns
    -------
    numpy.ndarray
        ``2**bits + 1`` non-decreasing int64 values from 0 to ``n``.
    """
    if n < 1:
        raise ValueError(f"n: a rank vector has at least one entry, got {n}")
    count = 1 << _check_bucket_bits(bits)
    j = np.arange(count + 1, dtype=np.int64)
    bounds: npt.NDArray[np.int64] = -((-j * n) // count)  # ceil(j n / 2^b), exactly
    return bounds


def rank_buckets(ranks: npt.ArrayLike, bits: int) -> npt.NDArray[np.int64]:
    """Each entry's bucket ``floor(rank * 2**bits / n)`` of a rank vector of length ``n``.

    Parameters
    ----------
    ranks : array_like of int
        A rank vector (a permutation of ``0..n-1``; only the range is checked).
    bits : int
        ``b``, 1 to :data:`MAX_BUCKET_BITS`.

    Returns
    -------
    numpy.ndarray
        A new int64 vector of bucket numbers in ``0..2**bits - 1``.
    """
    given = np.asarray(ranks)
    count = 1 << _check_bucket_bits(bits)
    if given.ndim != 1 or given.size == 0 or not np.issubdtype(given.dtype, np.integer):
        raise ValueError(
            f"ranks: expected a non-empty 1-D int array, got {given.dtype} {given.shape}"
        )
    n = given.size
    values = given.astype(np.int64)
    if int(values.min()) < 0 or int(values.max()) >= n:
        raise ValueError(f"ranks: entries must lie in 0..{n - 1}")
    # r * 2^b < n * 2^16 stays far inside int64 for any layer that fits in memory.
    buckets: npt.NDArray[np.int64] = (values * count) // n
    return buckets


def bucket_problem(
    buckets: npt.NDArray[np.integer], *, n: int, bits: int
) -> tuple[str, str] | None:
    """Say why ``buckets`` is not the bucket vector of some ranking of ``n`` edges.

    Returns
    -------
    tuple of (str, str) or None
        ``(reason, message)`` with reason ``bucket_out_of_range`` (an entry no rank maps
        to: beyond the last bucket, or in an empty one) or ``bad_bucket_counts`` (a bucket
        holds more or fewer edges than its share); ``None`` when every bucket holds
        exactly its share.
    """
    if buckets.ndim != 1 or buckets.size != n:
        return "bad_length", f"expected {n} entries, got shape {buckets.shape}"
    if not np.issubdtype(buckets.dtype, np.integer):
        return "bucket_out_of_range", f"expected integers, got dtype {buckets.dtype}"
    shares = np.diff(bucket_bounds(n, bits))
    values = np.ascontiguousarray(buckets, dtype=np.int64)
    # Seen as uint64, a negative entry is huge: one comparison checks both ends.
    outside = values.view(np.uint64) >= np.uint64(shares.size)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        return (
            "bucket_out_of_range",
            f"entry {index} is {int(values[index])}, outside 0..{shares.size - 1} "
            f"({int(outside.sum())} entries out of range)",
        )
    counts = np.bincount(values, minlength=shares.size)
    empty = (shares == 0) & (counts > 0)
    if empty.any():
        j = int(np.flatnonzero(empty)[0])
        return "bucket_out_of_range", f"bucket {j} holds no rank of {n} edges, got {int(counts[j])}"
    wrong = counts != shares
    if wrong.any():
        j = int(np.flatnonzero(wrong)[0])
        return (
            "bad_bucket_counts",
            f"bucket {j} holds {int(counts[j])} edges, its share is {int(shares[j])} "
            f"({int(wrong.sum())} buckets off)",
        )
    return None
