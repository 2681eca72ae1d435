"""Flower's robust aggregators with fedrank's seeded sampling (the FedAvg baselines).

The aggregation is Flower's own (``flwr.serverapp.strategy``), not rewritten: only
the client sampling is replaced by :class:`~fedrank.strategies.fedavg.SeededFedAvg`'s,
so every aggregator trains the same clients in the same rounds as FRL.

- :class:`SeededFedMedian`: coordinate-wise median (Yin et al., arXiv 1803.01498);
- :class:`SeededFedTrimmedAvg`: coordinate-wise trimmed mean, ``beta`` cut at each end
  (Yin et al., arXiv 1803.01498);
- :class:`SeededKrum` / :class:`SeededMultiKrum`: the update(s) with the smallest sum
  of squared distances to their ``m - f - 2`` nearest neighbours (Blanchard et al.,
  NeurIPS 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
  Descent"); Multi-Krum averages the ``m - f`` best.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg, Krum, MultiKrum

from fedrank.config import Scenario
from fedrank.protos.codecs import ArraysCodec
from fedrank.strategies.fedavg import SeededFedAvg
from fedrank.strategies.robust_vote import trim_count

__all__ = [
    "SeededFedMedian",
    "SeededFedTrimmedAvg",
    "SeededKrum",
    "SeededMultiKrum",
    "fedavg_strategy",
    "seeded_fedavg",
]


class SeededFedMedian(SeededFedAvg, FedMedian):
    """Flower's ``FedMedian`` (arXiv 1803.01498) with seeded sampling by partition id."""


class SeededFedTrimmedAvg(SeededFedAvg, FedTrimmedAvg):
    """Flower's ``FedTrimmedAvg`` (arXiv 1803.01498) with seeded sampling.

    Parameters
    ----------
    beta : float
        Fraction cut at each end of every coordinate, in ``[0, 0.5)``.
    """

    def __init__(
        self,
        *,
        codec: ArraysCodec,
        partitions: Mapping[int, int],
        clients_per_round: int,
        seed: int = 0,
        min_replies: int = 1,
        beta: float = 0.2,
    ) -> None:
        super().__init__(
            codec=codec,
            partitions=partitions,
            clients_per_round=clients_per_round,
            seed=seed,
            min_replies=min_replies,
        )
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta: must lie in [0, 0.5), got {beta}")
        self.beta = beta


class SeededMultiKrum(SeededFedAvg, MultiKrum):
    """Flower's ``MultiKrum`` (Blanchard et al., NeurIPS 2017) with seeded sampling.

    Parameters
    ----------
    num_malicious_nodes : int
        ``f``, the malicious replies Krum's score tolerates.
    num_nodes_to_select : int
        Replies averaged (``1``: Krum).
    """

    def __init__(
        self,
        *,
        codec: ArraysCodec,
        partitions: Mapping[int, int],
        clients_per_round: int,
        seed: int = 0,
        min_replies: int = 1,
        num_malicious_nodes: int = 0,
        num_nodes_to_select: int = 1,
    ) -> None:
        super().__init__(
            codec=codec,
            partitions=partitions,
            clients_per_round=clients_per_round,
            seed=seed,
            min_replies=min_replies,
        )
        if num_malicious_nodes < 0 or num_nodes_to_select < 1:
            raise ValueError(
                "num_malicious_nodes >= 0 and num_nodes_to_select >= 1 required, got "
                f"{num_malicious_nodes} and {num_nodes_to_select}"
            )
        self.num_malicious_nodes = num_malicious_nodes
        self.num_nodes_to_select = num_nodes_to_select


class SeededKrum(SeededMultiKrum, Krum):
    """Flower's ``Krum`` (Blanchard et al., NeurIPS 2017): Multi-Krum selecting one reply."""

    def __init__(
        self,
        *,
        codec: ArraysCodec,
        partitions: Mapping[int, int],
        clients_per_round: int,
        seed: int = 0,
        min_replies: int = 1,
        num_malicious_nodes: int = 0,
    ) -> None:
        super().__init__(
            codec=codec,
            partitions=partitions,
            clients_per_round=clients_per_round,
            seed=seed,
            min_replies=min_replies,
            num_malicious_nodes=num_malicious_nodes,
            num_nodes_to_select=1,
        )


def seeded_fedavg(
    aggregation: str,
    *,
    codec: ArraysCodec,
    partitions: Mapping[int, int],
    clients_per_round: int,
    seed: int = 0,
    min_replies: int = 1,
    trim_fraction: float = 0.2,
) -> SeededFedAvg:
    """The FedAvg-family strategy called ``aggregation``, with seeded sampling.

    ``mean`` is FedAvg; ``trimmed`` cuts ``trim_fraction`` at each end; ``krum`` and
    ``multikrum`` assume ``f = floor(trim_fraction * clients_per_round)`` malicious
    replies (Multi-Krum averages the ``m - f`` best); ``median`` has no parameter.
    """
    m = clients_per_round
    byzantine = trim_count(m, trim_fraction=trim_fraction)

    def make(kind: type[SeededFedAvg], **extra: Any) -> SeededFedAvg:
        return kind(
            codec=codec,
            partitions=partitions,
            clients_per_round=m,
            seed=seed,
            min_replies=min_replies,
            **extra,
        )

    if aggregation == "mean":
        return make(SeededFedAvg)
    if aggregation == "median":
        return make(SeededFedMedian)
    if aggregation == "trimmed":
        return make(SeededFedTrimmedAvg, beta=trim_fraction)
    if aggregation == "krum":
        return make(SeededKrum, num_malicious_nodes=byzantine)
    if aggregation == "multikrum":
        return make(
            SeededMultiKrum, num_malicious_nodes=byzantine, num_nodes_to_select=m - byzantine
        )
    raise ValueError(f"aggregation: not a FedAvg-family aggregator: {aggregation!r}")


def fedavg_strategy(
    scenario: Scenario, *, codec: ArraysCodec, partitions: Mapping[int, int]
) -> SeededFedAvg:
    """The scenario's FedAvg-family strategy (``aggregator``) over seeded client samples."""
    return seeded_fedavg(
        scenario.effective.aggregator,
        codec=codec,
        partitions=partitions,
        clients_per_round=scenario.run.clients_per_round,
        seed=scenario.run.seed,
        min_replies=scenario.run.min_replies,
        trim_fraction=scenario.aggregation.trim_fraction,
    )
