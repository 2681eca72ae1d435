"""Numpy <-> Flower record conversions shared by strategies and apps."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

from fedrank.errors import InvalidUpdate

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def validated_replies(
    server_round: int, replies: Iterable[Message], decode: Callable[[Message], T]
) -> tuple[list[T], Counter[str]]:
    """Decode every reply; count the rest by reason (``client_error`` or ``InvalidUpdate``'s).

    A bad reply is an expected event: it is logged and counted, never raised.
    """
    valid: list[T] = []
    rejected: Counter[str] = Counter()
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            rejected["client_error"] += 1
            log.warning("round %d: node %d failed: %s", server_round, node, reply.error.reason)
            continue
        try:
            valid.append(decode(reply))
        except InvalidUpdate as err:
            rejected[err.reason] += 1
            log.warning("round %d: rejected reply of node %d: %s", server_round, node, err)
    return valid, rejected


def rejection_metrics(
    valid: int, rejected: Counter[str]
) -> dict[str, int | float | list[int] | list[float]]:
    """``replies``, ``rejected`` and ``rejected.<reason>`` for a round's metrics."""
    return {
        "replies": valid,
        "rejected": sum(rejected.values()),
        **{f"rejected.{reason}": count for reason, count in sorted(rejected.items())},
    }
