"""``SeededFedAvg``: Flower's FedAvg with the same seeded client sampling as FRL.

The FedAvg baseline must see the same clients in the same rounds as ``FrlVote``
for a side-by-side comparison; only the sampling is replaced, the weighted
averaging is Flower's own.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedrank.strategies.sampling import train_messages

log = logging.getLogger(__name__)


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
    min_replies : int
        Fewer replies without an error than this and the round is skipped (global
        weights kept), as in ``FrlVote``.
    """

    def __init__(
        self,
        *,
        partitions: Mapping[int, int],
        clients_per_round: int,
        seed: int = 0,
        min_replies: int = 1,
    ) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        self.partitions = dict(partitions)
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.min_replies = min_replies

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global weights to a seeded sample of clients."""
        return train_messages(
            RecordDict({"arrays": arrays}),
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

        Below ``min_replies`` replies without an error the round is skipped.
        Flower's robust subclasses pop arrays out of the replies they aggregate; they
        get shallow copies, so the caller's replies stay whole (bytes are counted
        after aggregation).
        """
        replies = [_shallow_copy(r) for r in replies]
        failed = sum(1 for r in replies if r.has_error())
        valid = len(replies) - failed
        counts: dict[str, int | float | list[int] | list[float]] = {
            "replies": valid,
            "rejected": failed,
        }
        if failed:
            counts["rejected.client_error"] = failed
        if valid < self.min_replies:
            log.warning(
                "round %d skipped: %d valid replies, %d needed; the global weights are kept",
                server_round,
                valid,
                self.min_replies,
            )
            return None, MetricRecord(counts)
        arrays, metrics = super().aggregate_train(server_round, replies)
        return arrays, MetricRecord({**(metrics or {}), **counts})


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
