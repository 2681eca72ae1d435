"""``SeededFedAvg``: Flower's FedAvg with the same seeded client sampling as FRL.

The FedAvg baseline must see the same clients in the same rounds as ``FrlVote``
for a side-by-side comparison; only the sampling is replaced, the weighted
averaging is Flower's own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedrank.strategies.sampling import train_messages


class SeededFedAvg(FedAvg):
    """Federated Averaging (McMahan et al. 2017, arXiv 1602.05629), seeded sampling.

    Parameters
    ----------
    partitions : Mapping[int, int]
        Partition id -> node id.
    clients_per_round : int
        Clients sampled each round.
    seed : int
        Sampling seed (same scheme as ``FrlVote``).
    """

    def __init__(
        self, *, partitions: Mapping[int, int], clients_per_round: int, seed: int = 0
    ) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        self.partitions = dict(partitions)
        self.clients_per_round = clients_per_round
        self.seed = seed

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global weights to a seeded sample of clients."""
        return train_messages(
            arrays,
            config,
            partitions=self.partitions,
            count=self.clients_per_round,
            seed=self.seed,
            server_round=server_round,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's aggregation (weighted average here), plus the count of failed replies.

        Flower's robust subclasses pop arrays out of the replies they aggregate; they
        get shallow copies, so the caller's replies stay whole (bytes are counted
        after aggregation).
        """
        replies = [_shallow_copy(r) for r in replies]
        failed = sum(1 for r in replies if r.has_error())
        arrays, metrics = super().aggregate_train(server_round, replies)
        metrics = MetricRecord(
            {**(metrics or {}), "replies": len(replies) - failed, "rejected": failed}
        )
        return arrays, metrics


def _shallow_copy(message: Message) -> Message:
    """The same reply with fresh record containers (the arrays themselves are shared)."""
    if message.has_error():
        return message
    content = message.content
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {}
    for key, arrays in content.array_records.items():
        records[key] = ArrayRecord(dict(arrays.items()))
    for key, metrics in content.metric_records.items():
        records[key] = MetricRecord(dict(metrics.items()))
    for key, config in content.config_records.items():
        records[key] = ConfigRecord(dict(config.items()))
    return make_message(metadata=copy.copy(message.metadata), content=RecordDict(records))
