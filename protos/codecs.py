"""The two shapes of a fedrank message, both directions: rankings and arrays.

A task picks its codec (:meth:`fedrank.tasks.base.Task.codec`); the server encodes the
global state with it and decodes every reply through it (the gate, :mod:`.gate`), the
client decodes the global state and encodes its reply with it. Decoding validates the
whole message and raises only :class:`~fedrank.errors.InvalidUpdate`.

- :class:`RankingCodec`: FRL. The state is a rank vector per supermask layer, sent
  bit-packed in the ``update`` record (:class:`~fedrank.protos.ranking_wire.RankingWire`).
- :class:`ArraysCodec`: FedAvg weights and LoRA adapters. The state is named float
  arrays in the ``arrays`` record, checked against the layout of the global state
  (names in order, shapes, dtypes, finite values); under sample-level DP a reply also
  carries its privacy report.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SType
from numpy.lib import format as npy_format

from fedrank.errors import InvalidUpdate
from fedrank.protos import keys
from fedrank.protos.buckets import rank_buckets
from fedrank.protos.gate import RecordType, check_records, read_metrics
from fedrank.protos.ranking_wire import RankingWire
from fedrank.protos.records import to_array_record
from fedrank.protos.serde import decode_privacy_report, encode_privacy_report
from fedrank.protos.updates import PrivacyReportData

State = dict[str, np.ndarray]
Layout = dict[str, tuple[tuple[int, ...], np.dtype[Any]]]
"""Tensor name -> (shape, dtype), in the state's order."""


@dataclasses.dataclass(frozen=True)
class Reply:
    """What a client sends back after local training.

    Parameters
    ----------
    state : dict of str to ndarray
        Its rank vectors, weights or adapter tensors.
    num_examples : int or None
        Its weight in an average; None under DP (withheld: an exact count is outside
        the accounting).
    metrics : Mapping[str, float]
        Other reply metrics (:data:`fedrank.protos.keys.REPLY_METRICS`).
    privacy : PrivacyReportData, optional
        Its DP-SGD report, under sample-level DP.
    """

    state: State
    num_examples: int | None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    privacy: PrivacyReportData | None = None


@dataclasses.dataclass(frozen=True)
class Update:
    """A reply that passed the gate, as the strategies see it.

    Parameters
    ----------
    node : int
        The sender.
    state : dict of str to ndarray
        Validated state (rank vectors, or arrays of the global layout).
    weight : float
        Its example count, finite and in (0, ``MAX_EXAMPLES``].
    metrics : Mapping[str, float]
        Its validated metrics.
    privacy : PrivacyReportData, optional
        Its decoded privacy report (sample-level DP).
    """

    node: int
    state: State
    weight: float
    metrics: Mapping[str, float]
    privacy: PrivacyReportData | None = None


class Codec(Protocol):
    """Encode and decode one run's messages (see the module docstring)."""

    def encode_global(self, server_round: int, state: Mapping[str, np.ndarray]) -> RecordDict:
        """The records carrying the global state to a client."""
        ...

    def decode_global(self, server_round: int, content: RecordDict) -> State:
        """The validated global state a client received."""
        ...

    def encode_reply(self, server_round: int, reply: Reply) -> RecordDict:
        """The records of a client's reply."""
        ...

    def decode_reply(self, server_round: int, message: Message) -> Update:
        """The validated reply (raises ``InvalidUpdate``)."""
        ...


def _metrics_record(reply: Reply) -> MetricRecord:
    count = {} if reply.num_examples is None else {keys.NUM_EXAMPLES: int(reply.num_examples)}
    return MetricRecord({**count, **dict(reply.metrics)})


@dataclasses.dataclass(frozen=True)
class RankingCodec:
    """FRL rank vectors, bit-packed (see :class:`RankingWire`).

    Parameters
    ----------
    wire : RankingWire
        The run's layers, run id and model fingerprint.
    reply_bits : int
        0: clients reply with full rankings. ``b`` >= 1: with each edge's rank bucket
        ``floor(rank * 2**b / n)`` in ``b`` bits (:mod:`fedrank.protos.coarse`); the
        decoded reply state is then the bucket vectors. The global ranking the server
        sends is always full.
    """

    wire: RankingWire
    reply_bits: int = 0

    def encode_global(self, server_round: int, state: Mapping[str, np.ndarray]) -> RecordDict:
        """The global ranking in the ``update`` record."""
        return self.wire.encode(server_round, state)

    def decode_global(self, server_round: int, content: RecordDict) -> State:
        """The validated global ranking."""
        return self.wire.decode(server_round, content)

    def encode_reply(self, server_round: int, reply: Reply) -> RecordDict:
        """The client's ranking (full, or its buckets) and metrics."""
        if self.reply_bits:
            buckets = {n: rank_buckets(r, self.reply_bits) for n, r in reply.state.items()}
            content = self.wire.encode_buckets(server_round, buckets, bits=self.reply_bits)
        else:
            content = self.wire.encode(server_round, reply.state)
        content[keys.METRICS] = _metrics_record(reply)
        return content

    def decode_reply(self, server_round: int, message: Message) -> Update:
        """The reply's validated ranking (a permutation per layer, or bucket vectors each
        bucket holding its share) and metrics."""
        content = message.content
        check_records(content, required={keys.UPDATE: ConfigRecord, keys.METRICS: MetricRecord})
        if set(content[keys.UPDATE]) != {keys.RANKING}:
            raise InvalidUpdate(
                "malformed", f"the {keys.UPDATE!r} record must hold only {keys.RANKING!r}"
            )
        metrics = read_metrics(content.metric_records[keys.METRICS])
        if self.reply_bits:
            state = self.wire.decode_buckets(server_round, content, bits=self.reply_bits)
        else:
            state = self.wire.decode(server_round, content)
        return Update(
            node=message.metadata.src_node_id,
            state=state,
            weight=metrics[keys.NUM_EXAMPLES],
            metrics=metrics,
        )


def layout_of(state: Mapping[str, np.ndarray]) -> Layout:
    """Name -> (shape, dtype) of a state, in its order."""
    return {name: (tuple(value.shape), value.dtype) for name, value in state.items()}


def read_arrays(record: ArrayRecord, layout: Layout) -> State:
    """The record's arrays, checked against ``layout``: names, shapes, dtypes, finite.

    Every array's declared shape and dtype are checked before its bytes are read, and
    its bytes are read by :func:`decode_array` (memory bounded by the layout, not by
    what a payload declares).

    Raises
    ------
    InvalidUpdate
        ``missing_tensor``, ``extra_tensor``, ``malformed_array``, ``wrong_shape``,
        ``wrong_dtype`` or ``not_finite``.
    """
    missing = [name for name in layout if name not in record]
    extra = [name for name in record if name not in layout]
    if missing:
        raise InvalidUpdate("missing_tensor", f"reply lacks tensors {missing[:3]}")
    if extra:
        raise InvalidUpdate("extra_tensor", f"reply has unexpected tensors {extra[:3]}")
    out: State = {}
    for name, (shape, dtype) in layout.items():
        array = record[name]
        if tuple(array.shape) != shape:
            raise InvalidUpdate(
                "wrong_shape", f"{name}: expected {shape}, got {tuple(array.shape)[:8]}"
            )
        if array.dtype != str(dtype):
            raise InvalidUpdate(
                "wrong_dtype", f"{name}: expected {dtype}, got {str(array.dtype)[:40]!r}"
            )
        value = decode_array(name, array, shape, dtype)
        if not np.all(np.isfinite(value)):
            raise InvalidUpdate("not_finite", f"{name}: contains NaN or infinite values")
        out[name] = value
    return out


_NPY_HEADER_LIMIT = 4096  # bytes; a float array's .npy header takes about 128


def decode_array(
    name: str, array: Array, shape: tuple[int, ...], dtype: np.dtype[Any]
) -> np.ndarray:
    """The ``.npy`` bytes of a Flower ``Array``, read only as ``shape`` and ``dtype``.

    Unlike ``Array.numpy()``, which allocates whatever size the payload's own header
    declares before reading it, this reads the header (bounded), requires it to match
    ``shape`` and ``dtype`` and the payload to hold exactly that many bytes, and only
    then copies the data: memory stays within the expected array's size.

    Raises
    ------
    InvalidUpdate
        ``malformed_array``: another serialisation, an unreadable or other header, or a
        payload of another length.
    """
    if array.stype != SType.NUMPY or not isinstance(array.data, bytes):
        raise InvalidUpdate(
            "malformed_array", f"{name}: serialised as {str(array.stype)[:40]!r}, not numpy"
        )
    data = array.data
    canonical = _canonical_header(shape, dtype)
    if canonical and data.startswith(canonical):  # numpy's own header for these: no parse
        return _read_data(name, data, len(canonical), shape, dtype, fortran=False)
    stream = io.BytesIO(data[:_NPY_HEADER_LIMIT])
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            header = npy_format.read_array_header_1_0(stream, max_header_size=_NPY_HEADER_LIMIT)
        elif version == (2, 0):
            header = npy_format.read_array_header_2_0(stream, max_header_size=_NPY_HEADER_LIMIT)
        else:
            raise ValueError(f"npy format version {version}")
    except Exception as err:  # a foreign header numpy cannot read: any error is its fault
        raise InvalidUpdate("malformed_array", f"{name}: unreadable header: {err}"[:300]) from err
    declared_shape, fortran, declared_dtype = header
    if tuple(declared_shape) != shape or declared_dtype != dtype:
        raise InvalidUpdate(
            "malformed_array",
            f"{name}: the data is a {tuple(declared_shape)[:8]} {declared_dtype}, "
            f"declared as {shape} {dtype}",
        )
    return _read_data(name, data, stream.tell(), shape, dtype, fortran=fortran)


@functools.lru_cache(maxsize=1024)
def _canonical_header(shape: tuple[int, ...], dtype: np.dtype[Any]) -> bytes | None:
    """The ``.npy`` header numpy writes (``np.save``, Flower's ``Array``) for a C-ordered
    array of ``shape`` and ``dtype``: a payload that starts with it needs no parsing.

    Parsing reads exactly ``shape``, C order and ``dtype`` back from these bytes, so the
    shortcut accepts nothing the parse would refuse. numpy parses a header with
    ``ast.literal_eval``, most of the gate's time on a LoRA reply of 26 small tensors; a
    header written otherwise (another numpy version, a foreign client, Fortran order) is
    parsed as before. None for a dtype whose description does not read back as itself.
    """
    descr = npy_format.dtype_to_descr(dtype)
    if npy_format.descr_to_dtype(descr) != dtype:
        return None
    out = io.BytesIO()
    npy_format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def _read_data(
    name: str,
    data: bytes,
    offset: int,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    *,
    fortran: bool,
) -> np.ndarray:
    """The array after a header that declared ``shape`` and ``dtype``: a copy, exactly
    that many bytes or ``malformed_array``."""
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise InvalidUpdate(
            "malformed_array",
            f"{name}: {len(data) - offset} data bytes, expected {count * dtype.itemsize}",
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    if fortran:  # numpy writes an F-contiguous array in Fortran order
        return np.ascontiguousarray(flat.reshape(shape[::-1]).T)
    return flat.reshape(shape).copy()


@dataclasses.dataclass(frozen=True)
class ArraysCodec:
    """Named float arrays (FedAvg weights, LoRA adapters) against a fixed layout.

    Parameters
    ----------
    layout : Layout
        Names (in order), shapes and dtypes of the global state.
    privacy_report : bool
        Replies must carry a DP-SGD privacy report (sample-level DP).
    private : bool
        A DP run: a reply's example count and train loss (noiseless, outside the
        accounting) are neither needed nor used; every reply weighs 1.
    """

    layout: Layout
    privacy_report: bool = False
    private: bool = False

    @classmethod
    def for_state(
        cls, state: Mapping[str, np.ndarray], *, privacy_report: bool = False, private: bool = False
    ) -> ArraysCodec:
        """The codec of a run whose global state looks like ``state``."""
        return cls(layout=layout_of(state), privacy_report=privacy_report, private=private)

    def encode_global(self, server_round: int, state: Mapping[str, np.ndarray]) -> RecordDict:
        """The global arrays in the ``arrays`` record."""
        return RecordDict({keys.ARRAYS: to_array_record(state)})

    def decode_global(self, server_round: int, content: RecordDict) -> State:
        """The validated global arrays."""
        record = content.array_records.get(keys.ARRAYS)
        if record is None:
            raise InvalidUpdate("missing_record", f"message lacks its {keys.ARRAYS!r} record")
        return read_arrays(record, self.layout)

    def encode_reply(self, server_round: int, reply: Reply) -> RecordDict:
        """The client's arrays, metrics and (under DP-SGD) privacy report."""
        content = RecordDict(
            {
                keys.ARRAYS: to_array_record({name: reply.state[name] for name in self.layout}),
                keys.METRICS: _metrics_record(reply),
            }
        )
        if reply.privacy is not None:
            content[keys.PRIVACY] = ConfigRecord(
                {keys.REPORT: encode_privacy_report(reply.privacy)}
            )
        return content

    def decode_reply(self, server_round: int, message: Message) -> Update:
        """The reply's validated arrays, metrics and privacy report."""
        content = message.content
        optional: dict[str, RecordType] = (
            {keys.PRIVACY: ConfigRecord} if self.privacy_report else {}
        )
        check_records(
            content,
            required={keys.ARRAYS: ArrayRecord, keys.METRICS: MetricRecord},
            optional=optional,
        )
        metrics = read_metrics(
            content.metric_records[keys.METRICS], require_examples=not self.private
        )
        if self.private:
            metrics = {k: v for k, v in metrics.items() if k == keys.DP_EPSILON}
        privacy = None
        if self.privacy_report:
            record = content.config_records.get(keys.PRIVACY, ConfigRecord())
            payload = record.get(keys.REPORT)
            if not isinstance(payload, bytes) or set(record) != {keys.REPORT}:
                raise InvalidUpdate(
                    "missing_privacy_report", "sample-level DP needs exactly one privacy report"
                )
            privacy = decode_privacy_report(payload)
        return Update(
            node=message.metadata.src_node_id,
            state=read_arrays(content.array_records[keys.ARRAYS], self.layout),
            weight=1.0 if self.private else metrics[keys.NUM_EXAMPLES],
            metrics=metrics,
            privacy=privacy,
        )
