"""The wire of federated evaluation: what a site answers to an ``evaluate`` message.

A site evaluates the global state on its held-out examples and answers with one
``metrics`` record holding exactly :data:`~fedrank.protos.keys.EVAL_METRICS`; the server
reads it with :func:`read_evaluation`, which refuses anything else
(:class:`~fedrank.errors.InvalidUpdate`, counted, never trusted).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from flwr.app import Message, MetricRecord, RecordDict

from fedrank.errors import InvalidUpdate
from fedrank.protos import keys
from fedrank.protos.gate import MAX_EXAMPLES, check_records


class SiteEvaluation(NamedTuple):
    """One site's figures for the global model on its held-out examples."""

    loss: float
    accuracy: float
    num_examples: int


def evaluation_reply(evaluation: SiteEvaluation) -> RecordDict:
    """What a site answers (the ClientApp's side of :func:`read_evaluation`)."""
    return RecordDict(
        {
            keys.METRICS: MetricRecord(
                {
                    keys.EVAL_LOSS: float(evaluation.loss),
                    keys.EVAL_ACCURACY: float(evaluation.accuracy),
                    keys.NUM_EXAMPLES: int(evaluation.num_examples),
                }
            )
        }
    )


def read_evaluation(message: Message) -> SiteEvaluation:
    """A site's evaluation reply, validated: exactly the three metrics, finite, in range.

    Raises
    ------
    InvalidUpdate
        ``unknown_metric``, ``bad_metric`` or ``bad_num_examples`` (and the record
        checks' reasons).
    """
    check_records(message.content, required={keys.METRICS: MetricRecord})
    record = message.content.metric_records[keys.METRICS]
    if set(record) != set(keys.EVAL_METRICS):
        raise InvalidUpdate(
            "unknown_metric",
            f"an evaluation holds {sorted(keys.EVAL_METRICS)}, got {sorted(record)}",
        )
    count = record[keys.NUM_EXAMPLES]
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_EXAMPLES:
        raise InvalidUpdate(
            "bad_num_examples",
            f"{keys.NUM_EXAMPLES} must be an integer in (0, {MAX_EXAMPLES}], got {count!r}",
        )
    loss = _number(record, keys.EVAL_LOSS, low=0.0, high=math.inf)
    accuracy = _number(record, keys.EVAL_ACCURACY, low=0.0, high=1.0)
    return SiteEvaluation(loss, accuracy, count)


def _number(record: MetricRecord, key: str, *, low: float, high: float) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidUpdate("bad_metric", f"metric {key!r} must be a number, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidUpdate("bad_metric", f"{key!r} must lie in [{low}, {high}], got {value}")
    return float(value)
