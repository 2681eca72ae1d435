"""The base of fedrank's own strategies: the server evaluates the global model itself.

FRL's vote and the LoRA aggregation send no ``evaluate`` messages of their own; the run
evaluates each round's global model on the held-out test data, and federated evaluation
on the sites' held-out examples (``eval-fraction``) is added around any strategy by
:class:`fedrank.strategies.evaluation.FederatedEvaluation`.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class ServerEvaluated(Strategy):
    """A strategy with no federated evaluation of its own."""

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No evaluate messages: the server evaluates on held-out data."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """No federated evaluation."""
        return None
