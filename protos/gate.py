"""The gate every reply passes before any strategy sees it.

A reply is checked whole: the records its kind expects are present with the right
types and no others, its metrics are known keys holding finite numbers, its example
count is finite, positive and bounded. The payload itself (a ranking, arrays of the
right names, shapes and dtypes, a privacy report) is checked by the task's codec
(:mod:`fedrank.protos.codecs`), which calls these helpers. A reply that fails raises
:class:`~fedrank.errors.InvalidUpdate` with a stable reason code; :func:`gate` turns
that into a count and a log line, never a crash.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedrank.errors import InvalidUpdate
from fedrank.protos import keys

log = logging.getLogger(__name__)
T = TypeVar("T")

RecordType = type[ArrayRecord] | type[MetricRecord] | type[ConfigRecord]

MAX_EXAMPLES = 2**31 - 1
"""The most examples a reply may claim: its weight stays far from float overflow."""


def check_records(
    content: RecordDict,
    *,
    required: Mapping[str, RecordType],
    optional: Mapping[str, RecordType] | None = None,
) -> None:
    """Every ``required`` record present with its type, the ``optional`` ones typed, no other.

    Raises
    ------
    InvalidUpdate
        ``missing_record``, ``wrong_record_type`` or ``unknown_record``.
    """
    allowed = {**(optional or {}), **required}
    for name in content:
        if name not in allowed:
            raise InvalidUpdate(
                "unknown_record", f"reply has a record {name!r}; expected {sorted(allowed)}"
            )
        if not isinstance(content[name], allowed[name]):
            raise InvalidUpdate(
                "wrong_record_type",
                f"record {name!r} is a {type(content[name]).__name__}, "
                f"expected a {allowed[name].__name__}",
            )
    for name in required:
        if name not in content:
            raise InvalidUpdate("missing_record", f"reply lacks its {name!r} record")


def read_metrics(record: MetricRecord) -> dict[str, float]:
    """The reply's metrics: known keys, finite scalar numbers, ``num-examples`` bounded.

    Raises
    ------
    InvalidUpdate
        ``unknown_metric``, ``bad_metric`` or ``bad_num_examples``.
    """
    count = record.get(keys.NUM_EXAMPLES)
    if (
        isinstance(count, bool)
        or not isinstance(count, int | float)
        or not (math.isfinite(count) and 0 < count <= MAX_EXAMPLES)
    ):
        raise InvalidUpdate(
            "bad_num_examples",
            f"{keys.NUM_EXAMPLES} must lie in (0, {MAX_EXAMPLES}], got {count!r}",
        )
    out: dict[str, float] = {}
    for key, value in record.items():
        if key not in keys.REPLY_METRICS:
            raise InvalidUpdate(
                "unknown_metric", f"metric {key!r}; a reply may carry {sorted(keys.REPLY_METRICS)}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidUpdate("bad_metric", f"metric {key!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InvalidUpdate("bad_metric", f"metric {key!r} must be finite, got {value!r}")
        out[key] = float(value)
    return out


def gate(
    server_round: int, replies: Iterable[Message], decode: Callable[[Message], T]
) -> tuple[list[T], Counter[str]]:
    """Decode every reply through ``decode``; count the rest by reason.

    An error reply counts as ``client_error``; a reply ``decode`` refuses counts under
    its :class:`~fedrank.errors.InvalidUpdate` reason. Each is logged, never raised.
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
