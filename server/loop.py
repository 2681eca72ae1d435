"""The round loop of a fedrank run, on any Flower ``Strategy``.

Flower's ``Strategy.start`` runs rounds too, but it cannot resume, write metrics
as rounds complete or count bytes; this loop drives the same strategy methods
(``configure_train`` / ``aggregate_train``) and owns those concerns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrank.protos import keys
from fedrank.protos.records import content_bytes
from fedrank.server.failures import ask_again_if_never_run, failure_counts, split_replies
from fedrank.server.results import ResultsWriter
from fedrank.strategies.evaluation import FEDERATED_REJECTED
from fedrank.strategies.exchange import send_and_receive

log = logging.getLogger(__name__)

Evaluator = Callable[[ArrayRecord], tuple[float, float]]
RoundCallback = Callable[[dict[str, Any]], None]
# Called with (round, global arrays) once the round's metrics are written: checkpoints.
RoundEnd = Callable[[int, ArrayRecord], None]


def run_rounds(
    grid: Grid,
    strategy: Strategy,
    *,
    arrays: ArrayRecord,
    config: ConfigRecord,
    num_rounds: int,
    evaluate: Evaluator,
    results: ResultsWriter,
    timeout: float,
    start_round: int = 1,
    on_round: RoundCallback | None = None,
    after_round: RoundEnd | None = None,
    partition_of: Mapping[int, int] | None = None,
    settings: ConfigRecord | None = None,
    unasked: Collection[int] = (),
) -> ArrayRecord:
    """Run rounds ``start_round..num_rounds``; return the final global arrays.

    Each round's metrics (accuracy, loss, seconds, bytes up and down per client,
    replies, rejected replies by reason, whether it was skipped) are appended to
    ``results`` as soon as the round completes, then ``after_round`` is called
    (round 0 too: the initial state, unless ``results`` holds its row already, as in a
    run resumed from its round-0 checkpoint). ``bytes_up_per_client`` counts the replies
    the strategy's gate accepted when it says so (a refused reply's junk is not the
    protocol's cost), else every reply that answered. A client that failed (raised, timed out, lost
    its worker: :mod:`fedrank.server.failures`) is left out before the strategy
    aggregates and counted as ``rejected.<reason>``; ``partition_of`` (node id ->
    partition id) names partitions in the log. The run's client ``settings`` go with
    the first message to each node of ``unasked`` (nodes that discovery did not ask),
    and again with the next message to a node that failed (it may have lost them in a
    restart); ``bytes_down_per_client`` counts the messages without them.
    """
    resend = set(unasked)
    if start_round == 1:
        # A run resumed from its round-0 checkpoint has its round-0 row already.
        row0 = next((row for row in results.read_rounds() if row.get("round") == 0), None)
        if row0 is None:
            loss, accuracy = evaluate(arrays)
            row0 = {"round": 0, "accuracy": accuracy, "loss": loss, "seconds": 0.0}
            results.write_round(row0)
            if after_round:
                after_round(0, arrays)
        if on_round:
            on_round(row0)
    for server_round in range(start_round, num_rounds + 1):
        started = time.perf_counter()
        planned = list(strategy.configure_train(server_round, arrays, config, grid))
        messages = attach_settings(planned, settings, resend)
        log.info(
            "round %d: waiting at most %g s (round-timeout) for the replies of %d clients",
            server_round,
            timeout,
            len(messages),
        )
        deadline = time.monotonic() + timeout
        replies = list(send_and_receive(grid, messages, timeout=timeout))
        replies = ask_again_if_never_run(grid, messages, replies, deadline=deadline)
        answered, failures = split_replies(
            server_round, messages, replies, timeout=timeout, partition_of=partition_of
        )
        resend.update(failure.node_id for failure in failures)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, answered)
        if new_arrays is not None:
            arrays = new_arrays
        loss, accuracy = evaluate(arrays)
        federated = federated_evaluation(
            grid, strategy, server_round, arrays, config, timeout, settings=settings, resend=resend
        )
        row: dict[str, Any] = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            "seconds": time.perf_counter() - started,
            "clients": len(messages),
            "missing": len(messages) - len(replies),
            "skipped": new_arrays is None,
            "bytes_down_per_client": _mean(content_bytes(m.content) for m in planned),
            "bytes_up_per_client": _mean(content_bytes(r.content) for r in answered),
        }
        row.update(dict(train_metrics or {}))
        row.update(federated)
        for key, count in failure_counts(failures).items():
            row[key] = int(row.get(key, 0)) + count
        row["rejected"] = int(row.get("rejected", 0)) + len(failures)
        if row["skipped"]:
            log.warning(
                "round %d skipped: %d of %d sampled clients gave valid replies, too few; "
                "the global state is kept",
                server_round,
                int(row.get("replies", 0)),
                len(messages),
            )
        results.write_round(row)
        if after_round:
            after_round(server_round, arrays)
        if on_round:
            on_round(row)
    return arrays


def federated_evaluation(
    grid: Grid,
    strategy: Strategy,
    server_round: int,
    arrays: ArrayRecord,
    config: ConfigRecord,
    timeout: float,
    *,
    settings: ConfigRecord | None,
    resend: set[int],
) -> dict[str, Any]:
    """The strategy's federated evaluation of ``arrays`` (empty if it has none); a site
    that does not answer in time counts in ``federated_rejected``. Nodes in ``resend``
    get the run's ``settings`` with their message (:func:`attach_settings`)."""
    planned = strategy.configure_evaluate(server_round, arrays, config, grid)
    messages = attach_settings(planned, settings, resend)
    if not messages:
        return {}
    replies = list(send_and_receive(grid, messages, timeout=timeout))
    figures: dict[str, Any] = dict(strategy.aggregate_evaluate(server_round, replies) or {})
    missing = len(messages) - len(replies)
    if missing:
        figures[FEDERATED_REJECTED] = figures.get(FEDERATED_REJECTED, 0) + missing
    return figures


def _mean(values: Any) -> float:
    items = list(values)
    return float(sum(items) / len(items)) if items else 0.0


def attach_settings(
    messages: Iterable[Message], settings: ConfigRecord | None, resend: set[int]
) -> list[Message]:
    """``messages``, those to nodes in ``resend`` carrying the run's ``settings``; the
    nodes messaged leave ``resend``."""
    sent = list(messages)
    if settings is None or not resend:
        return sent
    out = [with_settings(m, settings) if m.metadata.dst_node_id in resend else m for m in sent]
    resend.difference_update(m.metadata.dst_node_id for m in sent)
    return out


def with_settings(message: Message, settings: ConfigRecord) -> Message:
    """A copy of a server message that also carries the run's client settings."""
    return Message(
        content=RecordDict({**message.content, keys.RUN: settings}),
        message_type=message.metadata.message_type,
        dst_node_id=message.metadata.dst_node_id,
    )
