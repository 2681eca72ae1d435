"""Client updates to and from the wire, validated before anything aggregates them.

The only module that touches the generated protobuf classes: ``*_to_proto`` /
``*_from_proto`` pairs, and the ``encode_*`` / ``decode_*`` functions built
on them (privacy reports in :mod:`fedrank.protos.privacy_serde`, re-exported
here). The rest of fedrank sees numpy arrays and the dataclasses of
:mod:`fedrank.protos.updates`.

Everything a client sends crosses a trust boundary, so decoding accepts
exactly one thing: the canonical encoding (the bytes this module's encoder
would write) of an update that matches the server's expectation. Anything
else raises :class:`fedrank.errors.InvalidUpdate` with a stable reason code;
no other exception escapes a ``decode_*`` function, whatever bytes it is
given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from fedrank.errors import InvalidUpdate
from fedrank.protos import update_pb2
from fedrank.protos.envelope import (
    check_body,
    distinct_names,
    header_from_proto,
    header_to_proto,
    match_names,
    parse,
)
from fedrank.protos.packing import (
    bits_for,
    pack_ranks,
    packed_size,
    padding_is_zero,
    unpack_permutation,
)
from fedrank.protos.privacy_serde import decode_privacy_report as decode_privacy_report
from fedrank.protos.privacy_serde import encode_privacy_report as encode_privacy_report
from fedrank.protos.updates import (
    AdapterExpectation,
    AdapterUpdateData,
    Factors,
    RankingExpectation,
    UpdateHeader,
)

__all__ = [
    "decode_adapter_update",
    "decode_privacy_report",
    "decode_ranking_update",
    "encode_adapter_update",
    "encode_privacy_report",
    "encode_ranking_update",
    "ranking_size_limit",
]

_DTYPES: dict[str, update_pb2.DType] = {
    "float16": update_pb2.DTYPE_FLOAT16,
    "float32": update_pb2.DTYPE_FLOAT32,
    "float64": update_pb2.DTYPE_FLOAT64,
}
_FACTORS: dict[Factors, update_pb2.AdapterFactors] = {
    "AB": update_pb2.ADAPTER_FACTORS_AB,
    "B": update_pb2.ADAPTER_FACTORS_B,
}


# ---------------------------------------------------------------- rankings


def _ranking_to_proto(
    layers: Mapping[str, npt.ArrayLike], *, into: update_pb2.RankingUpdate
) -> None:
    # Filled in place: handing a built sub-message to a constructor copies its
    # (megabytes of) packed bytes again.
    for name, ranks in layers.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"layers: layer names must be non-empty strings, got {name!r}")
        try:
            packed, bits = pack_ranks(ranks)
        except ValueError as error:
            raise ValueError(f"layers[{name!r}]: {error}") from error
        into.layers.add(name=name, length=np.size(ranks), bits_per_index=bits, packed=packed)


def _ranking_from_proto(
    ranking: update_pb2.RankingUpdate, *, layer_sizes: Mapping[str, int]
) -> dict[str, npt.NDArray[np.int64]]:
    by_name = {layer.name: layer for layer in ranking.layers}
    distinct_names((layer.name for layer in ranking.layers), kind="layer")
    match_names(set(by_name), layer_sizes, kind="layer")
    # Cheap structural checks on every layer before any unpacking.
    packed: dict[str, bytes] = {}
    for name, n in layer_sizes.items():
        layer = by_name[name]
        if layer.length != n:
            raise InvalidUpdate(
                "bad_length", f"layer {name!r}: expected {n} entries, got {layer.length}"
            )
        bits = bits_for(n)
        if layer.bits_per_index != bits:
            raise InvalidUpdate(
                "bad_bits",
                f"layer {name!r}: {n} entries take {bits} bits each, got {layer.bits_per_index}",
            )
        data = layer.packed
        size = packed_size(n=n, bits=bits)
        if len(data) != size:
            raise InvalidUpdate(
                "bad_length", f"layer {name!r}: expected {size} packed bytes, got {len(data)}"
            )
        if not padding_is_zero(data, n=n, bits=bits):
            raise InvalidUpdate("bad_padding", f"layer {name!r}: padding bits are not zero")
        packed[name] = data
    rankings = {}
    for name, n in layer_sizes.items():
        ranks, problem = unpack_permutation(packed[name], n=n)
        if problem is not None:
            raise InvalidUpdate(
                "not_permutation", f"layer {name!r}: not a permutation of 0..{n - 1}: {problem}"
            )
        rankings[name] = ranks
    return rankings


def encode_ranking_update(header: UpdateHeader, layers: Mapping[str, npt.ArrayLike]) -> bytes:
    """Encode a client's FRL ranking reply (arXiv 2110.04350): one rank vector per layer.

    Each vector is bit-packed (:func:`fedrank.protos.packing.pack_ranks`). Only
    the range of each entry is checked here, not that it is a permutation: the
    server's :func:`decode_ranking_update` is the one gate, and experiments
    that play a misbehaving client can still send what they like.

    Parameters
    ----------
    header : UpdateHeader
        Run, round and model fingerprint.
    layers : Mapping[str, array_like of int]
        Layer name -> rank vector (1-D, entries in ``0..n-1``).

    Returns
    -------
    bytes
        The canonical encoding of a ``fedrank.v1.Update``.

    Raises
    ------
    ValueError
        When a layer name is empty or a vector cannot be packed.
    """
    if not layers:
        raise ValueError("layers: an update has at least one layer")
    update = update_pb2.Update(header=header_to_proto(header))
    _ranking_to_proto(layers, into=update.ranking)
    return update.SerializeToString(deterministic=True)


def decode_ranking_update(
    payload: bytes, *, expect: RankingExpectation
) -> dict[str, npt.NDArray[np.int64]]:
    """Decode and validate a ranking reply; the only way a ranking reaches the vote.

    Parameters
    ----------
    payload : bytes
        What the client sent.
    expect : RankingExpectation
        This round's run, round, model fingerprint, layers and size limit.

    Returns
    -------
    dict of str to numpy.ndarray
        Layer name (in ``expect.layer_sizes`` order) -> a new int64 permutation.

    Raises
    ------
    InvalidUpdate
        For anything but a valid reply (and never any other exception).
        Reasons: ``too_large``, ``malformed``, ``non_canonical``,
        ``schema_version``, ``run_id``, ``round``, ``fingerprint``,
        ``wrong_kind``, ``duplicate_layer``, ``missing_layer``,
        ``extra_layer``, ``bad_length``, ``bad_bits``, ``bad_padding``,
        ``not_permutation``.
    """
    update = parse(payload, update_pb2.Update, max_bytes=expect.max_bytes)
    header_from_proto(update, expect=expect)
    check_body(update, "ranking")
    return _ranking_from_proto(update.ranking, layer_sizes=expect.layer_sizes)


def ranking_size_limit(layer_sizes: Mapping[str, int]) -> int:
    """An upper bound on the size of a valid ranking reply, for ``max_bytes``.

    The packed vectors plus a generous allowance for names, field tags and
    lengths (at most 10 bytes per varint) and a header with ids of up to 512
    bytes each.
    """
    body = sum(
        packed_size(n=n, bits=bits_for(n)) + len(name.encode("utf-8")) + 64
        for name, n in layer_sizes.items()
    )
    return body + 2048


# ---------------------------------------------------------------- adapters


def _adapter_to_proto(
    tensors: Mapping[str, npt.ArrayLike],
    *,
    rank: int,
    alpha: float,
    factors: Factors,
    into: update_pb2.AdapterUpdate,
) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank: expected an int >= 1, got {rank!r}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha: expected a finite number > 0, got {alpha!r}")
    if factors not in _FACTORS:
        raise ValueError(f"factors: expected 'AB' or 'B', got {factors!r}")
    into.lora_rank, into.lora_alpha, into.factors = rank, alpha, _FACTORS[factors]
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensors: names must be non-empty strings, got {name!r}")
        array = np.asarray(tensor)
        dtype = _DTYPES.get(array.dtype.name)
        if dtype is None:
            raise ValueError(
                f"tensors[{name!r}]: dtype must be one of {sorted(_DTYPES)}, got {array.dtype}"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"tensors[{name!r}]: contains NaN or Inf")
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        into.tensors.add(name=name, shape=array.shape, dtype=dtype, data=little.tobytes())


def _adapter_from_proto(
    adapter: update_pb2.AdapterUpdate, *, expect: AdapterExpectation
) -> AdapterUpdateData:
    factors = {number: name for name, number in _FACTORS.items()}.get(adapter.factors)
    config = [
        ("LoRA rank", expect.lora_rank, adapter.lora_rank),
        ("LoRA alpha", expect.lora_alpha, adapter.lora_alpha),
        ("factors", expect.factors, factors if factors else f"enum value {adapter.factors}"),
    ]
    for what, wanted, got in config:
        if wanted != got:
            raise InvalidUpdate("adapter_config", f"{what}: expected {wanted!r}, got {got!r}")
    by_name = {tensor.name: tensor for tensor in adapter.tensors}
    distinct_names((tensor.name for tensor in adapter.tensors), kind="tensor")
    match_names(set(by_name), expect.tensors, kind="tensor")
    dtype = np.dtype(expect.dtype)
    decoded = {}
    for name, shape in expect.tensors.items():
        tensor = by_name[name]
        if tuple(tensor.shape) != shape:
            raise InvalidUpdate(
                "bad_shape", f"tensor {name!r}: expected shape {shape}, got {tuple(tensor.shape)}"
            )
        if tensor.dtype != _DTYPES[expect.dtype]:
            names = {number: name for name, number in _DTYPES.items()}
            got = names.get(tensor.dtype, f"enum value {tensor.dtype}")
            raise InvalidUpdate("bad_dtype", f"tensor {name!r}: expected {expect.dtype}, got {got}")
        data = tensor.data
        size = math.prod(shape) * dtype.itemsize
        if len(data) != size:
            raise InvalidUpdate(
                "bad_length", f"tensor {name!r}: expected {size} data bytes, got {len(data)}"
            )
        array = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
        finite = np.isfinite(array)
        if not finite.all():
            raise InvalidUpdate(
                "non_finite",
                f"tensor {name!r}: {int(finite.size - finite.sum())} entries are NaN or Inf",
            )
        decoded[name] = array.astype(dtype)  # a new, writable array in native byte order
    return AdapterUpdateData(
        lora_rank=adapter.lora_rank,
        lora_alpha=adapter.lora_alpha,
        factors=expect.factors,
        tensors=decoded,
    )


def encode_adapter_update(
    header: UpdateHeader,
    tensors: Mapping[str, npt.ArrayLike],
    *,
    rank: int,
    alpha: float,
    factors: Factors,
) -> bytes:
    """Encode a client's LoRA adapter reply (arXiv 2106.09685; FFA-LoRA, arXiv 2403.12313).

    Parameters
    ----------
    header : UpdateHeader
        Run, round and model fingerprint.
    tensors : Mapping[str, array_like of float]
        Tensor name -> values (float16, float32 or float64; all finite).
    rank, alpha : int, float
        The LoRA rank and scaling alpha.
    factors : {"AB", "B"}
        Which factors are sent: both, or B only (FFA-LoRA keeps A frozen).

    Returns
    -------
    bytes
        The canonical encoding of a ``fedrank.v1.Update``.

    Raises
    ------
    ValueError
        For an unsupported dtype, a non-finite value, or a bad rank, alpha or factors.
    """
    if not tensors:
        raise ValueError("tensors: an update has at least one tensor")
    update = update_pb2.Update(header=header_to_proto(header))
    _adapter_to_proto(tensors, rank=rank, alpha=alpha, factors=factors, into=update.adapter)
    return update.SerializeToString(deterministic=True)


def decode_adapter_update(payload: bytes, *, expect: AdapterExpectation) -> AdapterUpdateData:
    """Decode and validate an adapter reply before any aggregation, clipping or noise.

    Raises
    ------
    InvalidUpdate
        For anything but a valid reply (and never any other exception).
        Reasons: ``too_large``, ``malformed``, ``non_canonical``,
        ``schema_version``, ``run_id``, ``round``, ``fingerprint``,
        ``wrong_kind``, ``adapter_config``, ``duplicate_tensor``,
        ``missing_tensor``, ``extra_tensor``, ``bad_shape``, ``bad_dtype``,
        ``bad_length``, ``non_finite``.
    """
    update = parse(payload, update_pb2.Update, max_bytes=expect.max_bytes)
    header_from_proto(update, expect=expect)
    check_body(update, "adapter")
    return _adapter_from_proto(update.adapter, expect=expect)
