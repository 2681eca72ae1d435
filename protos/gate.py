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
from fedrank.protos.records import content_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")

RecordType = type[ArrayRecord] | type[MetricRecord] | type[ConfigRecord]

MAX_EXAMPLES = 2**31 - 1
"""The most examples a reply may claim: its weight stays far from float overflow."""
BYTES_UP = "bytes_up_per_client"
"""Round metric: mean payload bytes of the replies the gate accepted."""


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
                "unknown_record", f"reply has a record {_short(name)}; expected {sorted(allowed)}"
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


def read_metrics(record: MetricRecord, *, require_examples: bool = True) -> dict[str, float]:
    """The reply's metrics: known keys, finite scalar numbers, ``num-examples`` bounded.

    ``require_examples=False`` (a DP reply): ``num-examples`` may be absent.

    Raises
    ------
    InvalidUpdate
        ``unknown_metric``, ``bad_metric`` or ``bad_num_examples``.
    """
    count = record.get(keys.NUM_EXAMPLES)
    if (require_examples or count is not None) and not (
        _is_finite_number(count) and 0 < count <= MAX_EXAMPLES  # type: ignore[operator]
    ):
        raise InvalidUpdate(
            "bad_num_examples",
            f"{keys.NUM_EXAMPLES} must lie in (0, {MAX_EXAMPLES}], got {_short(count)}",
        )
    out: dict[str, float] = {}
    for key, value in record.items():
        if key not in keys.REPLY_METRICS:
            raise InvalidUpdate(
                "unknown_metric",
                f"metric {_short(key)}; a reply may carry {sorted(keys.REPLY_METRICS)}",
            )
        if not _is_finite_number(value):
            raise InvalidUpdate(
                "bad_metric", f"metric {key!r} must be a finite number, got {_short(value)}"
            )
        out[key] = float(value)  # type: ignore[arg-type]
    return out


def _is_finite_number(value: object) -> bool:
    """A finite int or float, not a bool; an int too large for a float is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Rejections(Counter[str]):
    """Rejected replies by reason, and the payload bytes of the accepted ones.

    What :func:`gate` returns beside the valid updates; :func:`rejection_metrics` turns
    it into a round's metrics (``bytes_up_per_client`` counts accepted replies only:
    junk that was refused is not the protocol's cost).
    """

    def __init__(self) -> None:
        super().__init__()
        self.accepted_bytes: list[int] = []


def refusal_content(reason: str, detail: str) -> RecordDict:
    """A reply that refuses to train: the :data:`~fedrank.protos.keys.REFUSAL` record."""
    return RecordDict({keys.REFUSAL: ConfigRecord({keys.REASON: reason, keys.DETAIL: detail})})


def read_refusal(reply: Message) -> tuple[str, str] | None:
    """``(reason, detail)`` of a refusal reply (reason ``refused`` if not a known code)."""
    if reply.has_error() or keys.REFUSAL not in reply.content:
        return None
    record = reply.content[keys.REFUSAL]
    reason = record.get(keys.REASON) if isinstance(record, ConfigRecord) else None
    detail = record.get(keys.DETAIL) if isinstance(record, ConfigRecord) else None
    code = reason if isinstance(reason, str) and reason in keys.REFUSAL_REASONS else "refused"
    return code, (detail if isinstance(detail, str) else "")[:500]


def gate(
    server_round: int, replies: Iterable[Message], decode: Callable[[Message], T]
) -> tuple[list[T], Rejections]:
    """Decode every reply through ``decode``; count the rest by reason.

    An error reply counts as ``client_error``; a site's refusal under its reason code
    (:func:`read_refusal`); a reply ``decode`` refuses under its
    :class:`~fedrank.errors.InvalidUpdate` reason. Each is logged, never raised.
    ``decode`` raises only ``InvalidUpdate`` (the fuzz tests hold it to that); should
    it raise anything else on a foreign reply, that reply counts as ``undecodable`` and
    the error is logged: one client never stops a round.
    """
    valid: list[T] = []
    rejected = Rejections()
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            rejected["client_error"] += 1
            log.warning(
                "round %d: node %d failed: %s", server_round, node, _short(reply.error.reason, 300)
            )
            continue
        refusal = read_refusal(reply)
        if refusal is not None:
            rejected[refusal[0]] += 1
            log.warning("round %d: node %d refused: [%s] %s", server_round, node, *refusal)
            continue
        try:
            valid.append(decode(reply))
        except InvalidUpdate as err:
            rejected[err.reason] += 1
            log.warning("round %d: rejected reply of node %d: %s", server_round, node, err)
            continue
        except Exception as err:  # a decoder bug must cost one reply, not the run
            rejected["undecodable"] += 1
            log.error(
                "round %d: reply of node %d could not be decoded (%s: %s); rejected",
                server_round,
                node,
                type(err).__name__,
                _short(str(err), 300),
            )
            continue
        rejected.accepted_bytes.append(content_bytes(reply.content))
    return valid, rejected


def rejection_metrics(
    valid: int, rejected: Counter[str]
) -> dict[str, int | float | list[int] | list[float]]:
    """``replies``, ``rejected`` and ``rejected.<reason>`` for a round's metrics.

    With :class:`Rejections` (what :func:`gate` returns), also ``bytes_up_per_client``:
    the mean payload of the accepted replies.
    """
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "replies": valid,
        "rejected": sum(rejected.values()),
        **{f"rejected.{reason}": count for reason, count in sorted(rejected.items())},
    }
    sizes = getattr(rejected, "accepted_bytes", None)
    if sizes is not None:  # 0 when nothing was accepted: refused junk is no cost of ours
        metrics[BYTES_UP] = float(sum(sizes) / len(sizes)) if sizes else 0.0
    return metrics
