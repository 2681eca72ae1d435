"""The round loop of a fedrank run, on any Flower ``Strategy``.

Flower's ``Strategy.start`` runs rounds too, but it cannot resume, write metrics
as rounds complete or count bytes; this loop drives the same strategy methods
(``configure_train`` / ``aggregate_train``) and owns those concerns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrank.server.results import ResultsWriter
from fedrank.strategies.records import content_bytes

log = logging.getLogger(__name__)

Evaluator = Callable[[ArrayRecord], tuple[float, float]]
RoundCallback = Callable[[dict[str, Any]], None]


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
) -> ArrayRecord:
    """Run rounds ``start_round..num_rounds``; return the final global arrays.

    Each round's metrics (accuracy, loss, seconds, bytes up and down per client,
    replies, rejected replies by reason, whether it was skipped) are appended to
    ``results`` as soon as the round completes.
    """
    if start_round == 1:
        loss, accuracy = evaluate(arrays)
        row0 = {"round": 0, "accuracy": accuracy, "loss": loss, "seconds": 0.0}
        results.write_round(row0)
        if on_round:
            on_round(row0)
    for server_round in range(start_round, num_rounds + 1):
        started = time.perf_counter()
        messages = list(strategy.configure_train(server_round, arrays, config, grid))
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        loss, accuracy = evaluate(arrays)
        answered = [r for r in replies if not r.has_error()]
        row: dict[str, Any] = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            "seconds": time.perf_counter() - started,
            "clients": len(messages),
            "missing": len(messages) - len(replies),
            "skipped": new_arrays is None,
            "bytes_down_per_client": _mean(content_bytes(m.content) for m in messages),
            "bytes_up_per_client": _mean(content_bytes(r.content) for r in answered),
        }
        row.update(dict(train_metrics or {}))
        row["rejected"] = int(row.get("rejected", 0)) + row["missing"]
        results.write_round(row)
        if on_round:
            on_round(row)
    return arrays


def _mean(values: Any) -> float:
    items = list(values)
    return float(sum(items) / len(items)) if items else 0.0
