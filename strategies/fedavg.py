"""``SeededFedAvg``: Flower's FedAvg with the same seeded client sampling as FRL.

The FedAvg baseline must see the same clients in the same rounds as ``FrlVote``
for a side-by-side comparison; only the sampling is replaced, the weighted
averaging is Flower's own.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedrank.protos import keys
from fedrank.protos.codecs import ArraysCodec, Update
from fedrank.protos.gate import gate, rejection_metrics
from fedrank.protos.records import to_array_record
from fedrank.strategies.sampling import in_partition_order, train_messages

log = logging.getLogger(__name__)


class SeededFedAvg(FedAvg):
    """Federated Averaging (McMahan et al. 2017, arXiv 1602.05629), seeded sampling.

    Every reply passes the gate (``codec``: the arrays of the global layout, finite,
    an example count in range) before Flower's aggregation sees it; Flower's
    aggregators get fresh messages holding only the validated arrays and weights.

    Parameters
    ----------
    codec : ArraysCodec
        The run's arrays layout: what a valid reply holds.
    partitions : Mapping[int, int]
        Partition id -> node id.
    clients_per_round : int
        Clients sampled each round.
    seed : int
        Sampling seed (same scheme as ``FrlVote``).
    min_replies : int
        Fewer valid replies than this and the round is skipped (global weights
        kept), as in ``FrlVote``.
    """

    def __init__(
        self,
        *,
        codec: ArraysCodec,
        partitions: Mapping[int, int],
        clients_per_round: int,
        seed: int = 0,
        min_replies: int = 1,
    ) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        self.codec = codec
        self.partitions = dict(partitions)
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.min_replies = min_replies

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global weights to a seeded sample of clients."""
        return train_messages(
            RecordDict({keys.ARRAYS: arrays}),
            config,
            partitions=self.partitions,
            count=self.clients_per_round,
            seed=self.seed,
            server_round=server_round,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Gate the replies, then Flower's aggregation of the valid ones (partition order).

        Below ``min_replies`` valid replies the round is skipped.
        """
        ordered = in_partition_order(replies, self.partitions)
        valid, rejected = gate(
            server_round,
            ordered,
            lambda reply: (reply, self.codec.decode_reply(server_round, reply)),
        )
        updates = [update for _, update in valid]
        counts = rejection_metrics(len(updates), rejected)
        if len(updates) < self.min_replies:
            log.warning(
                "round %d skipped: %d valid replies, %d needed; the global weights are kept",
                server_round,
                len(updates),
                self.min_replies,
            )
            return None, MetricRecord(counts)
        arrays, _ = super().aggregate_train(server_round, clean_messages(valid))
        return arrays, MetricRecord({**train_loss(updates), **counts})


def clean_messages(valid: Sequence[tuple[Message, Update]]) -> list[Message]:
    """Fresh replies holding only validated arrays and weights (Flower's aggregators
    may pop or modify what they are given; the originals stay untouched)."""
    return [
        make_message(
            metadata=copy.copy(reply.metadata),
            content=RecordDict(
                {
                    keys.ARRAYS: to_array_record(update.state),
                    keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: update.weight}),
                }
            ),
        )
        for reply, update in valid
    ]


def train_loss(updates: Sequence[Update]) -> dict[str, float]:
    """The mean reported train loss of the valid replies (empty if none reported one)."""
    losses = [u.metrics[keys.TRAIN_LOSS] for u in updates if keys.TRAIN_LOSS in u.metrics]
    return {keys.TRAIN_LOSS: float(np.mean(losses))} if losses else {}
