"""A site's own ClientApp that misbehaves, written only against Flower's public Message API.

A foreign site does not share fedrank's code: this module imports Flower (``flwr.app``,
``flwr.clientapp``), numpy and the standard library, nothing of fedrank. It knows the
protocol as a site operator would, from the documentation: record and key names as
strings, and the ``fedrank.v1.PrivacyReport`` schema (field numbers, which it encodes
itself, as a site with its own protobuf code would: :mod:`tests.faults.foreign_privacy`,
the same kind of code).

It wraps an honest ClientApp (the test hands it fedrank's) and corrupts the honest
reply record by record. Every fault has a name; :data:`TRAIN_FAULTS` corrupt a train
reply's content, :data:`QUERY_FAULTS` the discovery answer, and :data:`RUNTIME_FAULTS`
misbehave in time (raise, crash, hang, answer late) or answer with a reply the
SuperLink refuses (``long_ttl``: a reply claiming to outlive its message).
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from tests.faults.foreign_privacy import (
    fields,
    no_report,
    read_varint,
    sigma_huge,
    sigma_tiny,
    steps_huge,
)

# The protocol, as documented for site operators.
PARTITION_ID = "partition-id"
CONFIG = "config"
SERVER_ROUND = "server-round"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
UPDATE = "update"
RANKING = "ranking"

Corruption = Callable[[RecordDict], RecordDict]
"""Honest reply content -> the content a faulty site sends instead (a new RecordDict)."""

JUNK_BYTES = 2 * 2**20
"""Size of the junk record of ``junk_record`` (the slow suite sends 200 MB)."""


def _copy(content: RecordDict, *, drop: tuple[str, ...] = ()) -> RecordDict:
    return RecordDict({name: record for name, record in content.items() if name not in drop})


def _arrays_name(content: RecordDict) -> str:
    names = list(content.array_records)
    if not names:
        raise LookupError("this reply carries no arrays")
    return names[0]


def _with_first_array(content: RecordDict, array: Array) -> RecordDict:
    name = _arrays_name(content)
    record = content.array_records[name]
    first = next(iter(record))
    items = {key: (array if key == first else value) for key, value in record.items()}
    return RecordDict({**content, name: ArrayRecord(items)})


def _first_array(content: RecordDict) -> np.ndarray:
    record = content.array_records[_arrays_name(content)]
    return next(iter(record.values())).numpy()


def no_metrics(content: RecordDict) -> RecordDict:
    """Leave out the metrics record."""
    return _copy(content, drop=(METRICS,))


def no_payload(content: RecordDict) -> RecordDict:
    """Leave out the update itself (its ArrayRecord, or the ranking record)."""
    return _copy(content, drop=(*content.array_records, UPDATE))


def metrics_as_config(content: RecordDict) -> RecordDict:
    """Send the metrics as a ConfigRecord (the wrong record type)."""
    metrics = content.metric_records[METRICS]
    return RecordDict({**content, METRICS: ConfigRecord(dict(metrics))})


def nan_weights(content: RecordDict) -> RecordDict:
    """NaN in every coordinate of the first tensor."""
    value = _first_array(content)
    return _with_first_array(content, Array(np.full_like(value, np.nan)))


def inf_weights(content: RecordDict) -> RecordDict:
    """One infinite coordinate."""
    value = _first_array(content).copy()
    value.flat[0] = np.inf
    return _with_first_array(content, Array(value))


def wrong_shape(content: RecordDict) -> RecordDict:
    """The first tensor one coordinate short."""
    value = _first_array(content).reshape(-1)[:-1]
    return _with_first_array(content, Array(np.ascontiguousarray(value)))


def wrong_dtype(content: RecordDict) -> RecordDict:
    """The first tensor as float64."""
    return _with_first_array(content, Array(_first_array(content).astype(np.float64)))


def garbage_bytes(content: RecordDict) -> RecordDict:
    """The first tensor's bytes replaced by random ones (declared shape and dtype kept)."""
    honest = next(iter(content.array_records[_arrays_name(content)].values()))
    junk = np.random.default_rng(7).bytes(len(honest.data))
    return _with_first_array(
        content, Array(dtype=honest.dtype, shape=honest.shape, stype=honest.stype, data=junk)
    )


def huge_declared_shape(content: RecordDict) -> RecordDict:
    """A declared shape of 2^62 elements over the honest bytes."""
    honest = next(iter(content.array_records[_arrays_name(content)].values()))
    shape = (2**31, 2**31)
    return _with_first_array(
        content, Array(dtype=honest.dtype, shape=shape, stype=honest.stype, data=honest.data)
    )


def lying_npy_header(content: RecordDict) -> RecordDict:
    """Honest declared shape, but the .npy header inside claims 10^12 elements."""
    honest = next(iter(content.array_records[_arrays_name(content)].values()))
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")
    data += b"\x00" * 64
    return _with_first_array(
        content, Array(dtype=honest.dtype, shape=honest.shape, stype=honest.stype, data=data)
    )


def _with_examples(content: RecordDict, value: float) -> RecordDict:
    metrics = dict(content.metric_records[METRICS])
    metrics[NUM_EXAMPLES] = value
    return RecordDict({**content, METRICS: MetricRecord(metrics)})


def huge_examples(content: RecordDict) -> RecordDict:
    """``num-examples`` = 1e308 (two such sites overflowed the weight sum)."""
    return _with_examples(content, 1e308)


def zero_examples(content: RecordDict) -> RecordDict:
    """``num-examples`` = 0."""
    return _with_examples(content, 0)


def nan_metric(content: RecordDict) -> RecordDict:
    """A NaN train loss."""
    metrics = dict(content.metric_records[METRICS])
    metrics["train-loss"] = float("nan")
    return RecordDict({**content, METRICS: MetricRecord(metrics)})


def unknown_metric(content: RecordDict) -> RecordDict:
    """A metric nobody asked for."""
    metrics = dict(content.metric_records[METRICS])
    metrics["my-own-metric"] = 1.0
    return RecordDict({**content, METRICS: MetricRecord(metrics)})


def junk_record(content: RecordDict, size: int | None = None) -> RecordDict:
    """A valid reply plus a second record of junk bytes (:data:`JUNK_BYTES`)."""
    blob = np.random.default_rng(11).bytes(JUNK_BYTES if size is None else size)
    return RecordDict({**content, "junk": ConfigRecord({"blob": blob})})


def _ranking(content: RecordDict) -> bytes:
    payload = content.config_records[UPDATE][RANKING]
    if not isinstance(payload, bytes):
        raise LookupError("this reply carries no ranking")
    return payload


def ranking_garbage(content: RecordDict) -> RecordDict:
    """The ranking payload replaced by random bytes of its length."""
    junk = np.random.default_rng(5).bytes(len(_ranking(content)))
    return RecordDict({**content, UPDATE: ConfigRecord({RANKING: junk})})


def ranking_truncated(content: RecordDict) -> RecordDict:
    """The ranking payload cut in half."""
    payload = _ranking(content)
    return RecordDict({**content, UPDATE: ConfigRecord({RANKING: payload[: len(payload) // 2]})})


def ranking_extra_key(content: RecordDict) -> RecordDict:
    """The ranking record with a second key."""
    return RecordDict(
        {**content, UPDATE: ConfigRecord({RANKING: _ranking(content), "note": "hello"})}
    )


def _field(payload: bytes, number: int, start: int, end: int) -> tuple[int, int]:
    """Where the value of the first field ``number`` of the message in ``payload[start:end]``
    lies. ``fedrank.v1.Update``: 2 ranking; ``RankingUpdate``: 1 layers; ``LayerRanking``:
    3 bits_per_index (varint), 4 packed."""
    for field in fields(payload, start, end):
        if field.number == number:
            return field.start, field.end
    raise LookupError(f"no field {number}")


def ranking_repeated_rank(content: RecordDict) -> RecordDict:
    """A well-formed ranking whose first layer gives edge 0 the rank of edge 1 (no rank
    missing from the schema's view: the right length, bits and padding)."""
    payload = bytearray(_ranking(content))
    body = _field(payload, 2, 0, len(payload))
    layer = _field(payload, 1, *body)
    bits = read_varint(payload, _field(payload, 3, *layer)[0])[0]
    first, last = _field(payload, 4, *layer)
    stream = int.from_bytes(payload[first:last], "little")
    lowest = (1 << bits) - 1
    stream = (stream & ~lowest) | ((stream >> bits) & lowest)
    payload[first:last] = stream.to_bytes(last - first, "little")
    return RecordDict({**content, UPDATE: ConfigRecord({RANKING: bytes(payload)})})


ARRAY_FAULTS: dict[str, Corruption] = {
    "nan_weights": nan_weights,
    "inf_weights": inf_weights,
    "wrong_shape": wrong_shape,
    "wrong_dtype": wrong_dtype,
    "garbage_bytes": garbage_bytes,
    "huge_declared_shape": huge_declared_shape,
    "lying_npy_header": lying_npy_header,
}
RANKING_FAULTS: dict[str, Corruption] = {
    "ranking_garbage": ranking_garbage,
    "ranking_truncated": ranking_truncated,
    "ranking_extra_key": ranking_extra_key,
    "ranking_repeated_rank": ranking_repeated_rank,
}
PRIVACY_FAULTS: dict[str, Corruption] = {
    "sigma_tiny": sigma_tiny,
    "sigma_huge": sigma_huge,
    "steps_huge": steps_huge,
    "no_report": no_report,
}
COMMON_FAULTS: dict[str, Corruption] = {
    "no_metrics": no_metrics,
    "no_payload": no_payload,
    "metrics_as_config": metrics_as_config,
    "huge_examples": huge_examples,
    "zero_examples": zero_examples,
    "nan_metric": nan_metric,
    "unknown_metric": unknown_metric,
    "junk_record": junk_record,
}
TRAIN_FAULTS: dict[str, Corruption] = {
    **COMMON_FAULTS,
    **ARRAY_FAULTS,
    **RANKING_FAULTS,
    **PRIVACY_FAULTS,
}


# --- discovery answers ------------------------------------------------------------------


def _answer(value: object) -> RecordDict:
    return RecordDict({CONFIG: ConfigRecord({PARTITION_ID: value})})  # type: ignore[dict-item]


QUERY_FAULTS: dict[str, Callable[[int, int], RecordDict]] = {
    # (own partition, the partition another site holds) -> the answer sent
    "no_config": lambda own, other: RecordDict(),
    "metrics_instead": lambda own, other: RecordDict({METRICS: MetricRecord({PARTITION_ID: own})}),
    "not_integer": lambda own, other: _answer(str(own)),
    "float_id": lambda own, other: _answer(own + 0.5),
    "duplicate": lambda own, other: _answer(other),
    "id_999": lambda own, other: _answer(999),
    "id_minus_3": lambda own, other: _answer(-3),
}

# --- misbehaving in time ----------------------------------------------------------------

RUNTIME_FAULTS = ("raise", "crash", "hang", "late", "long_ttl")


def _wait(seconds: float, release: Path | None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if release is not None and release.exists():
            return
        time.sleep(0.05)


def foreign_client_app(
    honest: ClientApp,
    *,
    train: Mapping[tuple[int, int], str] | None = None,
    query: Mapping[int, str] | None = None,
    victim: int = 0,
    late_seconds: float = 3.0,
    release: Path | None = None,
    received: Path | None = None,
) -> ClientApp:
    """``honest``, except where it misbehaves.

    Parameters
    ----------
    honest : ClientApp
        The site software whose replies are corrupted (any ClientApp).
    train : Mapping[(partition, round), str]
        The fault of a partition's train reply in a round: a name in
        :data:`TRAIN_FAULTS` or :data:`RUNTIME_FAULTS`. ``"*"`` as round (written -1)
        means every round.
    query : Mapping[partition, str]
        The fault of a partition's discovery answer: a name in :data:`QUERY_FAULTS`, or
        ``"raise"``.
    victim : int
        The partition a ``duplicate`` answer claims.
    late_seconds : float
        How long ``hang`` and ``late`` wait before answering (past the round timeout).
    release : Path, optional
        A file whose creation ends a ``hang`` early (so a test ends promptly).
    received : Path, optional
        A folder where each train message received leaves a file ``<partition>-<round>``
        (any process: Ray's workers too), so that a test knows who was sampled.
    """
    train_faults = dict(train or {})
    query_faults = dict(query or {})
    app = ClientApp()

    def own_partition(context: Context) -> int:
        return int(context.node_config[PARTITION_ID])  # type: ignore[arg-type]

    @app.query()
    def on_query(msg: Message, context: Context) -> Message:
        reply = honest(msg, context)  # the honest site keeps the run's settings
        fault = query_faults.get(own_partition(context))
        if fault is None:
            return reply
        if fault == "raise":
            raise RuntimeError("this site fails discovery")
        return Message(QUERY_FAULTS[fault](own_partition(context), victim), reply_to=msg)

    @app.train()
    def on_train(msg: Message, context: Context) -> Message:
        server_round = int(msg.content.config_records[CONFIG][SERVER_ROUND])  # type: ignore[arg-type]
        partition = own_partition(context)
        if received is not None:
            (received / f"{partition}-{server_round}").touch()
        fault = train_faults.get((partition, server_round), train_faults.get((partition, -1)))
        if fault == "raise":
            raise RuntimeError(f"this site fails round {server_round}")
        reply = honest(msg, context)
        if fault is None:
            return reply
        if fault == "crash":  # the process dies mid-round, its work done but not sent
            if "ray" in sys.modules and os.environ.get("RAY_RAYLET_PID"):
                os._exit(3)
            sys.exit(3)
        if fault in ("hang", "late"):
            _wait(late_seconds, release if fault == "hang" else None)
            return reply
        if fault == "long_ttl":  # a reply claiming to outlive the message it answers
            reply.metadata.ttl = reply.metadata.ttl + 3600.0
            return reply
        return Message(TRAIN_FAULTS[fault](reply.content), reply_to=msg)

    return app
