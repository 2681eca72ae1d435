"""``LoraAggregation``: federated LoRA with FedIT, FFA-LoRA or SVD re-compression.

The math is in :mod:`fedrank.strategies.lora_aggregation`; this class samples
clients (seeded, by partition id, like ``FrlVote``), validates every reply against
the adapter it sent and hands the valid ones to the selected aggregation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrank.config import Scenario
from fedrank.protos.codecs import ArraysCodec
from fedrank.protos.gate import gate, rejection_metrics
from fedrank.protos.records import from_array_record, to_array_record
from fedrank.strategies.baselines import BASELINES, baseline_strategy
from fedrank.strategies.fedavg import train_loss
from fedrank.strategies.lora_aggregation import (
    fedit_average,
    ffa_average,
    svd_recompress_updates,
)
from fedrank.strategies.lora_robust import (
    COORDINATE_RULES,
    ROBUST_RULES,
    coordinate_wise,
    krum_choice,
)
from fedrank.strategies.robust_vote import trim_count
from fedrank.strategies.sampling import in_partition_order, train_messages
from fedrank.strategies.server_evaluated import ServerEvaluated

log = logging.getLogger(__name__)

Aggregation = Literal["fedit", "ffa", "svd"]


def aggregate_adapters(
    updates: list[dict[str, np.ndarray]], weights: list[float], *, mode: Aggregation, rank: int
) -> dict[str, np.ndarray]:
    """The selected aggregation of whole adapters (weights: example counts)."""
    if mode == "ffa":
        return ffa_average(updates, weights)
    if mode == "svd":
        return svd_recompress_updates(updates, weights, rank=rank)
    return fedit_average(updates, weights)


class LoraAggregation(ServerEvaluated):
    """Federated LoRA (Hu et al., arXiv 2106.09685) over seeded client samples.

    ``mode``: ``"fedit"`` averages A and B separately (Zhang et al., arXiv 2305.05644);
    ``"ffa"`` averages B alone, A frozen from the shared seed, which is exact
    (FFA-LoRA, Sun et al., ICLR 2024, arXiv 2403.12313); ``"svd"`` re-compresses the
    weighted sum of the products B A to rank ``rank`` by truncated SVD (exact when
    that sum has rank <= ``rank``). The head and every other tensor are averaged.
    Weights are the clients' example counts. ``robust`` replaces the average by one
    of Flower's robust rules (:mod:`fedrank.strategies.lora_robust`).

    Parameters
    ----------
    codec : ArraysCodec
        The adapter's layout: what a valid reply holds (the gate).
    partitions : Mapping[int, int]
        Partition id -> node id.
    clients_per_round : int
    seed : int
        Sampling seed (the scheme of ``FrlVote`` and ``SeededFedAvg``).
    mode : {"fedit", "ffa", "svd"}
    rank : int
        Target rank of ``"svd"``.
    min_replies : int
        Fewer valid replies skip the round (the global adapter is kept).
    robust : {"mean", "median", "trimmed", "krum", "multikrum"}
        ``mean``: the ``mode`` average itself. ``median`` / ``trimmed``: coordinate-wise
        over the factors (not with ``"svd"``). ``krum`` / ``multikrum``: Flower's
        selection, then the ``mode`` average of the selected adapters.
    trim_fraction : float
        ``trimmed``: the cut at each end; Krum: ``f = floor(trim_fraction * clients_per_round)``
        malicious replies tolerated (Multi-Krum keeps ``clients_per_round - f``), as
        :func:`~fedrank.strategies.robust_fedavg.seeded_fedavg` does.
    """

    def __init__(
        self,
        *,
        codec: ArraysCodec,
        partitions: Mapping[int, int],
        clients_per_round: int,
        seed: int,
        mode: Aggregation,
        rank: int,
        min_replies: int = 1,
        robust: str = "mean",
        trim_fraction: float = 0.2,
    ) -> None:
        if mode not in ("fedit", "ffa", "svd"):
            raise ValueError(f"mode must be 'fedit', 'ffa' or 'svd', got {mode!r}")
        if robust not in ("mean", *ROBUST_RULES):
            raise ValueError(
                f"robust must be 'mean' or one of {list(ROBUST_RULES)}, got {robust!r}"
            )
        if robust in COORDINATE_RULES and mode == "svd":
            raise ValueError(f"robust {robust!r} acts on the factors; it cannot feed 'svd'")
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must lie in [0, 0.5), got {trim_fraction}")
        self.codec = codec
        self.partitions = dict(partitions)
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.mode: Aggregation = mode
        self.rank = rank
        self.min_replies = min_replies
        self.robust = robust
        self.trim_fraction = trim_fraction

    def summary(self) -> None:
        """Log the settings."""
        log.info(
            "LoraAggregation: %s (%s), %d of %d clients per round, min %d replies",
            self.mode,
            self.robust,
            self.clients_per_round,
            len(self.partitions),
            self.min_replies,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global adapter to a seeded sample of clients."""
        return train_messages(
            self.codec.encode_global(server_round, from_array_record(arrays)),
            config,
            partitions=self.partitions,
            count=self.clients_per_round,
            seed=self.seed,
            server_round=server_round,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate the replies, aggregate the valid ones (in partition order)."""
        ordered = in_partition_order(replies, self.partitions)
        valid, rejected = gate(
            server_round, ordered, lambda reply: self.codec.decode_reply(server_round, reply)
        )
        updates = [update.state for update in valid]
        weights = [update.weight for update in valid]
        metrics = MetricRecord({**rejection_metrics(len(updates), rejected), **train_loss(valid)})
        if len(updates) < self.min_replies:
            log.warning(
                "round %d skipped: %d valid replies, %d needed; the global adapter is kept",
                server_round,
                len(updates),
                self.min_replies,
            )
            return None, metrics
        merged, dropped = self._aggregate(updates, weights)
        if self.robust in ("krum", "multikrum"):
            metrics["filtered"] = dropped
        return to_array_record({name: merged[name] for name in self.codec.layout}), metrics

    def _aggregate(
        self, updates: list[dict[str, np.ndarray]], weights: list[float]
    ) -> tuple[dict[str, np.ndarray], int]:
        """The round's adapter, and how many valid replies the robust rule left out."""
        if self.robust in COORDINATE_RULES:
            return coordinate_wise(updates, rule=self.robust, beta=self.trim_fraction), 0
        if self.robust in ("krum", "multikrum"):
            byzantine = trim_count(self.clients_per_round, trim_fraction=self.trim_fraction)
            selected = 1 if self.robust == "krum" else self.clients_per_round - byzantine
            chosen = krum_choice(
                updates,
                weights,
                num_malicious=byzantine,
                num_selected=max(1, min(selected, len(updates))),
            )
            dropped = len(updates) - len(chosen)
            updates = [updates[i] for i in chosen]
            weights = [weights[i] for i in chosen]
        else:
            dropped = 0
        return aggregate_adapters(updates, weights, mode=self.mode, rank=self.rank), dropped


def lora_strategy(
    scenario: Scenario, *, codec: ArraysCodec, partitions: Mapping[int, int]
) -> Strategy:
    """The scenario's LoRA aggregation (``lora-aggregation``, ``aggregator``).

    Flower's FedAvgM, FedAdam, FedYogi, FedProx and Bulyan act on the adapter tensors
    as on any float arrays (:mod:`fedrank.strategies.baselines`): per tensor, so on A
    and B separately under FedIT and on B alone under FFA-LoRA (A never travels).
    """
    if scenario.effective.aggregator in BASELINES:
        return baseline_strategy(scenario, codec=codec, partitions=partitions)
    return LoraAggregation(
        codec=codec,
        partitions=partitions,
        clients_per_round=scenario.run.clients_per_round,
        seed=scenario.run.seed,
        mode=scenario.lora.aggregation,
        rank=scenario.lora.rank,
        min_replies=scenario.run.min_replies,
        robust=scenario.effective.aggregator,
        trim_fraction=scenario.aggregation.trim_fraction,
    )
