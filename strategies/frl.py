"""``FrlVote``: the Federated Rank Learning server strategy (arXiv 2110.04350, Alg. 1).

Message plumbing only: the vote is :func:`fedrank.strategies.ranking.borda_vote`
by default, or any :data:`~fedrank.strategies.votes.RankVote` (robust votes).
Each round the strategy sends the global rank vectors (bit-packed, see
:mod:`fedrank.protos.ranking_wire`) to a seeded sample of clients, decodes
and validates every reply (a reply that is not a valid update for this run,
round and model is rejected with a reason and counted; the round goes on), and
votes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedrank.config import Scenario
from fedrank.protos.codecs import RankingCodec
from fedrank.protos.gate import gate, rejection_metrics
from fedrank.protos.records import from_array_record, to_array_record
from fedrank.strategies.coarse import coarse_vote
from fedrank.strategies.sampling import train_messages
from fedrank.strategies.server_evaluated import ServerEvaluated
from fedrank.strategies.votes import RankVote, rank_vote

log = logging.getLogger(__name__)


class FrlVote(ServerEvaluated):
    """Federated Rank Learning: clients rank edges, the server takes a Borda vote.

    Parameters
    ----------
    partitions : Mapping[int, int]
        Partition id -> node id (from :func:`discover_partitions`).
    clients_per_round : int
        Clients sampled each round (seeded by ``seed`` and the round).
    codec : RankingCodec
        This run's ranking messages: its layers and sizes, run id and model
        fingerprint; a reply that does not match is rejected.
    min_replies : int
        Fewer valid replies than this and the round is skipped (global state kept).
    seed : int
        Sampling seed.
    vote : RankVote, optional
        ``(valid replies, global ranking sent this round, anchor) -> (new ranking,
        replies left out)``; defaults to the plain Borda vote (:func:`rank_vote`).
    smoothing : float
        The vote's smoothing across rounds: in round ``t`` the global ranking sent
        counts as ``smoothing * t`` mean replies (the anchor), so the ranking moves a
        step ``1 / (1 + smoothing * t)`` of the way the replies point; 0 is FRL's vote.
    """

    def __init__(
        self,
        *,
        partitions: Mapping[int, int],
        clients_per_round: int,
        codec: RankingCodec,
        min_replies: int = 1,
        seed: int = 0,
        vote: RankVote | None = None,
        smoothing: float = 0.0,
    ) -> None:
        self.partitions = dict(partitions)
        self.clients_per_round = clients_per_round
        self.codec = codec
        self.min_replies = min_replies
        self.seed = seed
        self.vote = vote or rank_vote("borda")
        self.smoothing = smoothing
        self._reference: dict[str, np.ndarray] = {}

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info(
            "FrlVote: %d of %d clients per round, min %d valid replies, layers %s",
            self.clients_per_round,
            len(self.partitions),
            self.min_replies,
            dict(self.codec.wire.layer_sizes),
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global rank vectors, bit-packed, to a seeded sample of clients."""
        self._reference = from_array_record(arrays)  # what robust votes compare against
        return train_messages(
            self.codec.encode_global(server_round, self._reference),
            config,
            partitions=self.partitions,
            count=self.clients_per_round,
            seed=self.seed,
            server_round=server_round,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, count the rejected ones, vote over the rest."""
        updates, rejected = gate(
            server_round, replies, lambda reply: self.codec.decode_reply(server_round, reply)
        )
        valid = [update.state for update in updates]
        metrics = MetricRecord(rejection_metrics(len(valid), rejected))
        if len(valid) < self.min_replies:
            log.warning(
                "round %d skipped: %d valid replies, %d needed; the global ranking is kept",
                server_round,
                len(valid),
                self.min_replies,
            )
            return None, metrics
        state, left_out = self.vote(valid, self._reference, self.smoothing * server_round)
        metrics["filtered"] = left_out
        return to_array_record(state), metrics


def frl_strategy(
    scenario: Scenario, *, codec: RankingCodec, partitions: Mapping[int, int]
) -> FrlVote:
    """The scenario's FRL strategy: its vote (``aggregator``) over seeded client samples;
    with ``rank-bits`` > 0, Borda on the coarse replies' bucket midpoints."""
    vote = (
        coarse_vote(scenario.frl.rank_bits)
        if scenario.frl.rank_bits
        else rank_vote(
            scenario.effective.aggregator,
            trim_fraction=scenario.aggregation.trim_fraction,
            filter_mads=scenario.aggregation.filter_mads,
        )
    )
    return FrlVote(
        partitions=partitions,
        clients_per_round=scenario.run.clients_per_round,
        codec=codec,
        min_replies=scenario.run.min_replies,
        seed=scenario.run.seed,
        vote=vote,
        smoothing=scenario.frl.vote_smoothing,
    )
