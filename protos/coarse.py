"""Coarse FRL rankings on the wire: each edge's rank bucket in ``b`` bits.

A full ranking costs ``ceil(log2 n)`` bits per edge (:mod:`fedrank.protos.packing`).
With ``rank-bits = b`` a client sends instead, for every edge, the bucket of its rank,
``floor(rank * 2**b / n)``: ``b`` bits per edge, and each bucket holds exactly its share
of the layer's edges (:func:`~fedrank.protos.buckets.bucket_bounds`). The server accepts
exactly that: like a full ranking must be a permutation, a bucket vector must fill every
bucket with its share, so a client cannot put all its weight on a few buckets.

Like :mod:`fedrank.protos.serde`, decoding accepts only the canonical encoding of an
update that matches the round's expectation and raises nothing but
:class:`~fedrank.errors.InvalidUpdate`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from fedrank.errors import InvalidUpdate
from fedrank.protos import update_pb2
from fedrank.protos.buckets import MAX_BUCKET_BITS, bucket_problem
from fedrank.protos.envelope import (
    check_body,
    distinct_names,
    header_from_proto,
    header_to_proto,
    match_names,
    parse,
)
from fedrank.protos.packing import (
    pack_values,
    packed_size,
    padding_is_zero,
    unpack_ranks,
)
from fedrank.protos.updates import RankingExpectation, UpdateHeader

__all__ = [
    "coarse_size_limit",
    "decode_coarse_ranking_update",
    "encode_coarse_ranking_update",
]


def _coarse_to_proto(
    layers: Mapping[str, npt.ArrayLike], *, bits: int, into: update_pb2.CoarseRankingUpdate
) -> None:
    for name, buckets in layers.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"layers: layer names must be non-empty strings, got {name!r}")
        try:
            packed = pack_values(buckets, bits)
        except ValueError as error:
            raise ValueError(f"layers[{name!r}]: {error}") from error
        into.layers.add(name=name, length=np.size(buckets), bits_per_bucket=bits, packed=packed)


def _coarse_from_proto(
    coarse: update_pb2.CoarseRankingUpdate, *, layer_sizes: Mapping[str, int], bits: int
) -> dict[str, npt.NDArray[np.int64]]:
    by_name = {layer.name: layer for layer in coarse.layers}
    distinct_names((layer.name for layer in coarse.layers), kind="layer")
    match_names(set(by_name), layer_sizes, kind="layer")
    for name, n in layer_sizes.items():  # cheap structural checks before any unpacking
        layer = by_name[name]
        if layer.length != n:
            raise InvalidUpdate(
                "bad_length", f"layer {name!r}: expected {n} entries, got {layer.length}"
            )
        if layer.bits_per_bucket != bits:
            raise InvalidUpdate(
                "bad_bits",
                f"layer {name!r}: this run's buckets take {bits} bits, got {layer.bits_per_bucket}",
            )
        size = packed_size(n=n, bits=bits)
        if len(layer.packed) != size:
            raise InvalidUpdate(
                "bad_length",
                f"layer {name!r}: expected {size} packed bytes, got {len(layer.packed)}",
            )
        if not padding_is_zero(layer.packed, n=n, bits=bits):
            raise InvalidUpdate("bad_padding", f"layer {name!r}: padding bits are not zero")
    decoded = {}
    for name, n in layer_sizes.items():
        buckets = unpack_ranks(by_name[name].packed, n=n, bits=bits)
        problem = bucket_problem(buckets, n=n, bits=bits)
        if problem is not None:
            raise InvalidUpdate(problem[0], f"layer {name!r}: {problem[1]}")
        decoded[name] = buckets
    return decoded


def encode_coarse_ranking_update(
    header: UpdateHeader, layers: Mapping[str, npt.ArrayLike], *, bits: int
) -> bytes:
    """Encode a client's coarse ranking reply: each layer's bucket vector in ``bits`` bits.

    Only the range of each entry is checked (``0..2**bits - 1``), not the bucket counts:
    :func:`decode_coarse_ranking_update` is the one gate.

    Raises
    ------
    ValueError
        An empty layer name, ``bits`` outside 1..16, or a vector that cannot be packed.
    """
    if not layers:
        raise ValueError("layers: an update has at least one layer")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BUCKET_BITS:
        raise ValueError(f"bits: expected an int in 1..{MAX_BUCKET_BITS}, got {bits!r}")
    update = update_pb2.Update(header=header_to_proto(header))
    _coarse_to_proto(layers, bits=bits, into=update.coarse_ranking)
    return update.SerializeToString(deterministic=True)


def decode_coarse_ranking_update(
    payload: bytes, *, expect: RankingExpectation
) -> dict[str, npt.NDArray[np.int64]]:
    """Decode and validate a coarse ranking reply (``expect.bucket_bits`` bits an edge).

    Returns
    -------
    dict of str to numpy.ndarray
        Layer name (in ``expect.layer_sizes`` order) -> a new int64 bucket vector in
        which bucket ``j`` holds exactly its share of the layer's edges.

    Raises
    ------
    InvalidUpdate
        For anything but a valid reply (and never any other exception). Reasons: those
        of :func:`fedrank.protos.serde.decode_ranking_update` (``wrong_kind`` for a full
        ranking), with ``bucket_out_of_range`` and ``bad_bucket_counts`` in place of
        ``not_permutation``.
    """
    if expect.bucket_bits < 1:
        raise ValueError("expect: a coarse ranking needs bucket_bits >= 1")
    update = parse(payload, update_pb2.Update, max_bytes=expect.max_bytes)
    header_from_proto(update, expect=expect)
    check_body(update, "coarse_ranking")
    return _coarse_from_proto(
        update.coarse_ranking, layer_sizes=expect.layer_sizes, bits=expect.bucket_bits
    )


def coarse_size_limit(layer_sizes: Mapping[str, int], bits: int) -> int:
    """An upper bound on the size of a valid coarse reply (as ``ranking_size_limit``)."""
    body = sum(
        packed_size(n=n, bits=bits) + len(name.encode("utf-8")) + 64
        for name, n in layer_sizes.items()
    )
    return body + 2048
