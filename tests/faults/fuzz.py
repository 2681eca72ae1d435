"""A seeded generator of whole Flower replies: random records, keys and values.

Half of what it builds starts from an honest reply and changes a few things in it (a
record dropped, added, retyped or refilled; an array's dtype, shape, serialisation or
bytes; a metric; a ranking or privacy-report payload flipped, cut or extended), so the
decoders are reached past their first check; the rest is random from the start. Every
value is one Flower's records accept, so each reply is one a foreign site could send.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from tests.faults.foreign_privacy import read_report, write_report

MAX_BLOB = 4096  # bytes of one random payload; the generator's own memory stays small

NAMES = ("arrays", "metrics", "update", "privacy", "config", "ranking", "report", "junk", "")
KEYS = ("num-examples", "train-loss", "steps", "dp-epsilon", "ranking", "report", "x", "")
DTYPES = ("float32", "float64", "float16", "int64", "uint8", "bool", "<f4", ">f4", "object", "")
STYPES = ("numpy.ndarray", "torch.Tensor", "", "pickle")
INTS = (0, 1, -1, 2, 7, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63))
FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 5e-324, 1e308, -1e308, math.inf, -math.inf, math.nan)


def _int(rng: np.random.Generator) -> int:
    if rng.random() < 0.6:
        return int(INTS[rng.integers(len(INTS))])
    return int(rng.integers(-(2**40), 2**40))


def _float(rng: np.random.Generator) -> float:
    if rng.random() < 0.6:
        return float(FLOATS[rng.integers(len(FLOATS))])
    return float(rng.normal() * 10.0 ** rng.integers(-20, 20))


def _bytes(rng: np.random.Generator) -> bytes:
    return rng.bytes(int(rng.integers(0, MAX_BLOB)))


def _text(rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return str(KEYS[rng.integers(len(KEYS))])
    return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, size=rng.integers(0, 12)))


def _metric_value(rng: np.random.Generator) -> Any:
    kind = rng.integers(4)
    if kind == 0:
        return _int(rng)
    if kind == 1:
        return _float(rng)
    if kind == 2:
        return [_int(rng) for _ in range(rng.integers(0, 4))]
    return [_float(rng) for _ in range(rng.integers(0, 4))]


def _config_value(rng: np.random.Generator) -> Any:
    kind = rng.integers(7)
    if kind == 0:
        return _int(rng)
    if kind == 1:
        return _float(rng)
    if kind == 2:
        return bool(rng.integers(2))
    if kind == 3:
        return _text(rng)
    if kind == 4:
        return _bytes(rng)
    if kind == 5:
        return [_bytes(rng)[:64] for _ in range(rng.integers(0, 3))]
    return [_int(rng) for _ in range(rng.integers(0, 3))]


def _shape(rng: np.random.Generator, like: tuple[int, ...] | None) -> tuple[int, ...]:
    kind = rng.integers(5)
    if like is not None and kind == 0:
        return like
    if like is not None and kind == 1 and like:
        changed = list(like)
        changed[rng.integers(len(changed))] += int(rng.choice([-1, 1, 2**31]))
        return tuple(max(0, d) for d in changed)
    if kind == 2:
        return (2**31, 2**31)
    return tuple(int(d) for d in rng.integers(0, 5, size=rng.integers(0, 4)))


def _array(rng: np.random.Generator, like: Array | None) -> Array:
    """A random Array, or one derived from ``like``."""
    kind = rng.integers(6)
    if like is not None and kind == 0:  # honest header, bytes flipped / cut / extended
        data = bytearray(like.data)
        for _ in range(rng.integers(1, 4)):
            if data:
                data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        if rng.random() < 0.3:
            data = data[: rng.integers(len(data) + 1)]
        return Array(dtype=like.dtype, shape=like.shape, stype=like.stype, data=bytes(data))
    if like is not None and kind == 1:  # a real .npy of another array, declared as like
        shape = _shape(rng, tuple(like.shape))
        size = math.prod(shape) if math.prod(shape) < 4096 else 0
        dtype = np.dtype(["float32", "float64", "int32", "float16"][rng.integers(4)])
        value = rng.normal(size=size).astype(dtype)
        real = Array(value.reshape(shape) if size else value)
        return Array(dtype=like.dtype, shape=like.shape, stype=like.stype, data=real.data)
    if like is not None and kind == 2 and like.stype == "numpy.ndarray":  # NaN or inf in it
        try:
            value = like.numpy().copy()
        except Exception:  # like is already a broken one (numpy may raise anything)
            value = np.zeros(0, dtype=np.float32)
        if value.size and np.issubdtype(value.dtype, np.floating):
            value.flat[rng.integers(value.size)] = [np.nan, np.inf, -np.inf][rng.integers(3)]
        return Array(value)
    dtype = str(DTYPES[rng.integers(len(DTYPES))])
    stype = str(STYPES[rng.integers(len(STYPES))])
    return Array(dtype=dtype, shape=_shape(rng, None), stype=stype, data=_bytes(rng))


def _record(rng: np.random.Generator, like: Any = None) -> Any:
    """A random record (of ``like``'s type when given, its items mutated)."""
    kind = (
        type(like)
        if like is not None
        else [ArrayRecord, MetricRecord, ConfigRecord][rng.integers(3)]
    )
    if kind is ArrayRecord:
        items = dict(like.items()) if like is not None else {}
        names = list(items) or ["w"]
        for _ in range(rng.integers(1, 3)):
            name = names[rng.integers(len(names))] if rng.random() < 0.7 else _text(rng)
            action = rng.integers(3)
            if action == 0 and name in items:
                del items[name]
            else:
                items[name] = _array(rng, items.get(name))
        return ArrayRecord(items)
    if kind is MetricRecord:
        metrics = dict(like.items()) if like is not None else {}
        for _ in range(rng.integers(1, 3)):
            key = str(KEYS[rng.integers(len(KEYS))]) if rng.random() < 0.8 else _text(rng)
            if key in metrics and rng.random() < 0.3:
                del metrics[key]
            else:
                metrics[key] = _metric_value(rng)
        return MetricRecord(metrics)
    config = dict(like.items()) if like is not None else {}
    for key, value in list(config.items()):
        if isinstance(value, bytes) and rng.random() < 0.7:
            config[key] = _payload(rng, value)
    for _ in range(rng.integers(0, 2)):
        config[_text(rng)] = _config_value(rng)
    return ConfigRecord(config)


def _payload(rng: np.random.Generator, payload: bytes) -> bytes:
    """A ranking or privacy-report payload, changed the way a faulty site might."""
    kind = rng.integers(5)
    if kind == 0:  # a privacy report with extreme fields (reencoded: canonical)
        try:
            fields = read_report(payload)
        except (ValueError, IndexError, KeyError, struct.error):
            fields = {}
        if fields:
            number = int(rng.choice([3, 4, 5, 6, 7, 8]))
            fields[number] = abs(_int(rng)) % 2**64 if number == 5 else abs(_float(rng))
            try:
                return write_report(fields)
            except (OverflowError, ValueError, struct.error):
                return payload
    data = bytearray(payload)
    if kind == 1 and data:
        for _ in range(rng.integers(1, 6)):
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
    elif kind == 2:
        data = data[: rng.integers(len(data) + 1)]
    elif kind == 3:
        data += _bytes(rng)[:256]
    else:
        data = bytearray(_bytes(rng))
    return bytes(data)


def fuzzed_content(rng: np.random.Generator, honest: RecordDict) -> RecordDict:
    """One fuzzed reply content (see the module docstring)."""
    records: dict[str, Any] = dict(honest.items()) if rng.random() < 0.5 else {}
    actions: list[Callable[[], None]] = []

    def drop() -> None:
        if records:
            del records[list(records)[rng.integers(len(records))]]

    def add() -> None:
        name = str(NAMES[rng.integers(len(NAMES))]) if rng.random() < 0.8 else _text(rng)
        records[name] = _record(rng)

    def mutate() -> None:
        if records:
            name = list(records)[rng.integers(len(records))]
            records[name] = _record(rng, records[name])

    actions = [drop, add, mutate, mutate, mutate]
    for _ in range(rng.integers(1, 4) if records else rng.integers(0, 4)):
        actions[rng.integers(len(actions))]()
    return RecordDict(records)
