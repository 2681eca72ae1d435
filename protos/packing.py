"""Bit-packing of FRL rank vectors (numpy, no per-element Python loops; the permutation
check of received vectors is compiled where a C compiler was at hand, ``_permutation.c``).

A rank vector of a layer with ``n`` edges is a permutation of ``0..n-1``
(Federated Rank Learning, arXiv 2110.04350, Sec. 3). Each entry fits in
``bits_for(n) = max(1, ceil(log2 n))`` bits, so the vector is sent as a stream
of ``n * bits`` bits instead of ``n`` int64 words: 21 bits instead of 64 for a
1.6M-edge layer.

Stream layout (fixed by the wire schema, ``fedrank/v1/update.proto``): entry
``i`` occupies stream bits ``[i * bits, (i + 1) * bits)``, least significant
bit first, and stream bit ``k`` is bit ``k % 8`` of byte ``k // 8``. The
stream is ``ceil(n * bits / 8)`` bytes long and the unused high bits of the
last byte are zero.

The work is vectorised over groups of 8 entries: 8 entries of ``bits`` bits
fill exactly ``bits`` bytes, and entry ``j`` of every group sits at the same
bit offset of its group. So the (de)coder loops over the 8 lanes of a group,
each step one numpy operation over many groups at once (in chunks that stay
in cache).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "bits_for",
    "pack_ranks",
    "pack_values",
    "packed_size",
    "padding_is_zero",
    "permutation_problem",
    "unpack_permutation",
    "unpack_ranks",
]

_GROUP = 8  # entries per group: 8 entries of `bits` bits are exactly `bits` bytes
_CHUNK_GROUPS = 8192  # groups per step: keeps a step's working set in cache
_WORD = np.dtype("<u8")
_MARK_CHUNK = 32768  # entries a permutation check marks per step


def bits_for(n: int) -> int:
    """Bits per index for a rank vector of length ``n``: ``max(1, ceil(log2 n))``.

    Parameters
    ----------
    n : int
        Length of the rank vector, at least 1.

    Returns
    -------
    int
        The number of bits that holds every value in ``0..n-1``.
    """
    if n < 1:
        raise ValueError(f"n: a rank vector has at least one entry, got {n}")
    return max(1, (n - 1).bit_length())


def packed_size(*, n: int, bits: int) -> int:
    """Length in bytes of ``n`` entries of ``bits`` bits: ``ceil(n * bits / 8)``."""
    return (n * bits + 7) // 8


def _lane_layout(bits: int) -> list[tuple[int, np.uint64, np.uint64, bool]]:
    """Per lane j of a group: (word, shift, 64 - shift, whether it spills into word + 1).

    Entry j of a group starts at bit ``j * bits`` of the group's little-endian
    words; it spills into the next word when it does not end inside its own.
    """
    layout = []
    for lane in range(_GROUP):
        word, shift = divmod(lane * bits, 64)
        layout.append((word, np.uint64(shift), np.uint64(64 - shift), shift + bits > 64))
    return layout


def pack_ranks(ranks: npt.ArrayLike) -> tuple[bytes, int]:
    """Pack a rank vector into ``bits_for(n)`` bits per entry.

    Only the range is checked here (every entry in ``0..n-1``), not that the
    vector is a permutation; :func:`permutation_problem` does that.

    Parameters
    ----------
    ranks : array_like of int
        One-dimensional, length ``n >= 1``, every entry in ``0..n-1``.

    Returns
    -------
    tuple of (bytes, int)
        The packed stream (``packed_size(n=n, bits=bits)`` bytes) and ``bits``.

    Raises
    ------
    ValueError
        When ``ranks`` is not a non-empty 1-D integer array with entries in
        ``0..n-1``.
    """
    given = np.asarray(ranks)
    if given.ndim != 1:
        raise ValueError(f"ranks: expected a 1-D array, got shape {given.shape}")
    if not np.issubdtype(given.dtype, np.integer):
        raise ValueError(f"ranks: expected an integer array, got dtype {given.dtype}")
    n = int(given.size)
    bits = bits_for(n)
    # Seen as uint64, a negative entry is huge: one max() checks both ends.
    values = np.ascontiguousarray(given, dtype=np.int64).view(np.uint64)
    if int(values.max()) >= n:
        raise ValueError(
            f"ranks: entries must lie in 0..{n - 1}, got min {int(given.min())}, "
            f"max {int(given.max())}"
        )
    return _pack_stream(values, bits), bits


def pack_values(values: npt.ArrayLike, bits: int) -> bytes:
    """Pack integers in ``0..2**bits - 1`` at ``bits`` bits each (the rank stream layout).

    Parameters
    ----------
    values : array_like of int
        One-dimensional, non-empty (coarse rankings' bucket numbers).
    bits : int
        Bits per entry, 1 to 63.

    Raises
    ------
    ValueError
        When ``values`` is not a non-empty 1-D integer array in range.
    """
    given = np.asarray(values)
    if given.ndim != 1 or given.size == 0 or not np.issubdtype(given.dtype, np.integer):
        raise ValueError(
            f"values: expected a non-empty 1-D int array, got {given.dtype} {given.shape}"
        )
    if not 1 <= bits <= 63:
        raise ValueError(f"bits: expected 1..63, got {bits}")
    unsigned = np.ascontiguousarray(given, dtype=np.int64).view(np.uint64)
    if int(unsigned.max()) >= 1 << bits:
        raise ValueError(f"values: entries must lie in 0..{(1 << bits) - 1}")
    return _pack_stream(unsigned, bits)


def _pack_stream(values: npt.NDArray[np.uint64], bits: int) -> bytes:
    """``values`` (each below ``2**bits``) as a stream of ``bits``-bit entries."""
    n = int(values.size)
    words_per_group = -(-bits // 8)
    groups = -(-n // _GROUP)
    stream = np.empty((groups, bits), dtype=np.uint8)
    words_buffer = np.empty((min(groups, _CHUNK_GROUPS), words_per_group), dtype=_WORD)
    scratch_buffer = np.empty(min(groups, _CHUNK_GROUPS), dtype=np.uint64)
    layout = _lane_layout(bits)
    for first in range(0, groups, _CHUNK_GROUPS):
        count = min(groups, first + _CHUNK_GROUPS) - first
        chunk = values[first * _GROUP : (first + count) * _GROUP]
        if chunk.size < count * _GROUP:  # the last group is padded with zeros
            chunk = np.concatenate([chunk, np.zeros(count * _GROUP - chunk.size, np.uint64)])
        grid = chunk.reshape(count, _GROUP)
        words, scratch = words_buffer[:count], scratch_buffer[:count]
        words.fill(0)
        for lane, (word, shift, back, spills) in enumerate(layout):
            np.left_shift(grid[:, lane], shift, out=scratch)
            np.bitwise_or(words[:, word], scratch, out=words[:, word])
            if spills:
                np.right_shift(grid[:, lane], back, out=scratch)
                np.bitwise_or(words[:, word + 1], scratch, out=words[:, word + 1])
        # A group's `bits` bytes are the low bytes of its little-endian words.
        stream[first : first + count] = words.view(np.uint8)[:, :bits]
    return stream.reshape(-1)[: packed_size(n=n, bits=bits)].tobytes()


def unpack_ranks(data: bytes, *, n: int, bits: int) -> npt.NDArray[np.int64]:
    """Unpack ``n`` entries of ``bits`` bits from a stream made by :func:`pack_ranks`.

    The values are returned as they are (each in ``0..2**bits - 1``); whether
    they form a permutation of ``0..n-1`` is :func:`permutation_problem`'s job
    (:func:`unpack_permutation` unpacks and checks).

    Parameters
    ----------
    data : bytes
        Exactly ``packed_size(n=n, bits=bits)`` bytes.
    n : int
        Number of entries, at least 1.
    bits : int
        Bits per entry, 1 to 63.

    Returns
    -------
    numpy.ndarray
        A new, writable int64 array of length ``n``.

    Raises
    ------
    ValueError
        When ``n`` or ``bits`` is out of range, or ``data`` has the wrong length.
    """
    if n < 1:
        raise ValueError(f"n: a rank vector has at least one entry, got {n}")
    if not 1 <= bits <= 63:
        raise ValueError(f"bits: expected 1..63, got {bits}")
    size = packed_size(n=n, bits=bits)
    if len(data) != size:
        raise ValueError(f"data: {n} entries of {bits} bits take {size} bytes, got {len(data)}")

    raw = np.frombuffer(data, dtype=np.uint8)
    words_per_group = -(-bits // 8)
    groups = -(-n // _GROUP)
    ranks = np.empty(groups * _GROUP, dtype=np.int64)
    grid = ranks.view(np.uint64).reshape(groups, _GROUP)
    # Bytes beyond `bits` in each group's words stay zero throughout.
    group_bytes = np.zeros((min(groups, _CHUNK_GROUPS), words_per_group * 8), dtype=np.uint8)
    lane_buffer = np.empty(min(groups, _CHUNK_GROUPS), dtype=np.uint64)
    scratch_buffer = np.empty_like(lane_buffer)
    mask = np.uint64((1 << bits) - 1)
    layout = _lane_layout(bits)
    for first in range(0, groups, _CHUNK_GROUPS):
        count = min(groups, first + _CHUNK_GROUPS) - first
        chunk = raw[first * bits : (first + count) * bits]
        if chunk.size < count * bits:  # the stream's last group is short
            chunk = np.concatenate([chunk, np.zeros(count * bits - chunk.size, np.uint8)])
        group_bytes[:count, :bits] = chunk.reshape(count, bits)
        words = group_bytes[:count].view(_WORD)
        lane_values, scratch = lane_buffer[:count], scratch_buffer[:count]
        out = grid[first : first + count]
        for lane, (word, shift, back, spills) in enumerate(layout):
            np.right_shift(words[:, word], shift, out=lane_values)
            if spills:
                np.left_shift(words[:, word + 1], back, out=scratch)
                np.bitwise_or(lane_values, scratch, out=lane_values)
            np.bitwise_and(lane_values, mask, out=out[:, lane])
    return ranks[:n]


def unpack_permutation(data: bytes, *, n: int) -> tuple[npt.NDArray[np.int64], str | None]:
    """Unpack a rank vector of ``n`` edges and check that it is a permutation.

    The stream is :func:`pack_ranks`'s (``bits_for(n)`` bits an entry). Exact, with the
    same verdict and message as ``permutation_problem(unpack_ranks(...), n=n)``, and
    cheaper: one walk marks each entry in a table of ``n`` bits (compiled) or, without
    the compiled module, numpy marks each in a table of ``2**bits`` flags (an unpacked
    entry is below ``2**bits`` by construction) with no range pass first; either way the
    vector is a permutation exactly when ``n`` entries reach ``n`` distinct values in
    ``0..n-1``. Only a vector that fails is read again, by :func:`permutation_problem`,
    to name its problem.

    Parameters
    ----------
    data : bytes
        Exactly ``packed_size(n=n, bits=bits_for(n))`` bytes.
    n : int
        Number of entries, at least 1.

    Returns
    -------
    tuple of (numpy.ndarray, str or None)
        The new, writable int64 vector, and ``None`` when it is a permutation of
        ``0..n-1``, otherwise :func:`permutation_problem`'s message.

    Raises
    ------
    ValueError
        When ``n`` is below 1 or ``data`` has the wrong length.
    """
    ranks = unpack_ranks(data, n=n, bits=bits_for(n))
    if _is_permutation(ranks):
        return ranks, None
    problem = permutation_problem(ranks, n=n)
    if problem is None:  # pragma: no cover - the two tests are equivalent
        raise AssertionError(f"the flag table and permutation_problem disagree (n={n})")
    return ranks, problem


def _numpy_is_permutation(ranks: npt.NDArray[np.int64]) -> bool:
    """Whether ``ranks`` (unpacked, each below ``2**bits_for(n)``) is a permutation of
    ``0..n-1``, in numpy: about 1.8 ns an edge for 800k edges, where the compiled walk
    (a table of ``n`` bits that stays in cache) takes about 0.9."""
    n = ranks.size
    seen = np.zeros(1 << bits_for(n), dtype=bool)
    # In steps of _MARK_CHUNK entries (256 KB of index, which stays in cache): measured
    # about 10% cheaper than one scatter over a layer of 800k edges.
    for first in range(0, n, _MARK_CHUNK):
        seen[ranks[first : first + _MARK_CHUNK]] = True
    return bool(seen[:n].all())


try:  # the compiled walk (protos/_permutation.c), built where a C compiler was at hand
    from fedrank.protos._permutation import is_permutation as _is_permutation
except ImportError:  # pragma: no cover - numpy's flags serve instead
    _is_permutation = _numpy_is_permutation

COMPILED_CHECK = _is_permutation is not _numpy_is_permutation
"""Whether :func:`unpack_permutation` checks with the compiled walk (else numpy's flags)."""


def padding_is_zero(data: bytes, *, n: int, bits: int) -> bool:
    """Whether the unused high bits of the stream's last byte are zero."""
    used = (n * bits) % 8
    return used == 0 or len(data) == 0 or data[-1] >> used == 0


def permutation_problem(ranks: npt.NDArray[np.integer], *, n: int) -> str | None:
    """Say why ``ranks`` is not a permutation of ``0..n-1``, or ``None`` if it is.

    Parameters
    ----------
    ranks : numpy.ndarray of int
        The candidate rank vector.
    n : int
        The expected length.

    Returns
    -------
    str or None
        A message naming the first problem found (wrong shape or dtype, an
        entry out of range, a repeated entry), or ``None`` for a permutation.
    """
    if ranks.ndim != 1 or ranks.size != n:
        return f"expected {n} entries, got shape {ranks.shape}"
    if not np.issubdtype(ranks.dtype, np.integer):
        return f"expected integers, got dtype {ranks.dtype}"
    values = np.ascontiguousarray(ranks, dtype=np.int64)
    # Seen as uint64, a negative entry is huge: one max() checks both ends.
    unsigned = values.view(np.uint64)
    if int(unsigned.max()) >= n:
        out_of_range = unsigned >= n
        index = int(np.flatnonzero(out_of_range)[0])
        return (
            f"entry {index} is {int(ranks[index])}, outside 0..{n - 1} "
            f"({int(out_of_range.sum())} entries out of range)"
        )
    # n entries in range, so "every value seen" is the same as "no repeats".
    seen = np.zeros(n, dtype=bool)
    seen[values] = True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        counts = np.bincount(values, minlength=n)
        repeated = int(np.flatnonzero(counts > 1)[0])
        return (
            f"{missing.size} values missing (first {int(missing[0])}); "
            f"value {repeated} appears {int(counts[repeated])} times"
        )
    return None
