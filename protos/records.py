"""Numpy <-> Flower record conversions shared by strategies and apps."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as a Flower ``ArrayRecord`` (order kept)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named numpy arrays out of a Flower ``ArrayRecord``."""
    return {name: array.numpy() for name, array in record.items()}


def content_bytes(content: RecordDict) -> int:
    """Payload bytes of a message: array data plus bytes/str config values."""
    total = sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    for rec in content.config_records.values():
        for value in rec.values():
            if isinstance(value, bytes | str):
                total += len(value)
    return total
