"""Robust aggregation of LoRA adapters with Flower's rules, not rewritten.

The FedAvg baselines use Flower's ``FedMedian``, ``FedTrimmedAvg``, ``Krum`` and
``MultiKrum`` strategies whole (:mod:`fedrank.strategies.robust_fedavg`). A LoRA
round is aggregated by :class:`~fedrank.strategies.lora.LoraAggregation`, which
validates replies against the adapter it sent and sums them in partition order, so
here the same rules are applied to the validated adapters by Flower's own functions:

- ``median``: the coordinate-wise median of every tensor, unweighted, as
  ``FedMedian.aggregate_train`` computes it (Yin et al., arXiv 1803.01498);
- ``trimmed``: ``flwr.serverapp.strategy.fedtrimmedavg.trim_mean``, ``beta`` cut at
  each end of every coordinate (Yin et al., arXiv 1803.01498);
- ``krum`` / ``multikrum``: ``flwr.serverapp.strategy.multikrum.select_multikrum``
  picks the adapter(s) with the smallest sum of squared distances to their
  ``m - f - 2`` nearest neighbours (Blanchard et al., NeurIPS 2017); the chosen ones
  are then aggregated by the run's ``lora-aggregation`` (FedIT, FFA or SVD), weighted
  by example counts, as Flower's ``MultiKrum`` averages them.

The coordinate-wise rules act on the factors A and B separately, like FedIT: under
FFA-LoRA every A is the same frozen matrix, so only B is robustly aggregated, which
is exact. They do not compose with SVD re-compression (its input is the weighted sum
of the products) and are refused there (``fedrank.config``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum

from fedrank.strategies.lora_aggregation import Update

__all__ = ["COORDINATE_RULES", "ROBUST_RULES", "RobustRule", "coordinate_wise", "krum_choice"]

RobustRule = Literal["median", "trimmed", "krum", "multikrum"]
ROBUST_RULES: tuple[str, ...] = ("median", "trimmed", "krum", "multikrum")
COORDINATE_RULES: tuple[str, ...] = ("median", "trimmed")
_WEIGHT_KEY = "num-examples"


def coordinate_wise(
    updates: Sequence[Update], *, rule: str, beta: float = 0.0
) -> dict[str, np.ndarray]:
    """Every tensor's coordinate-wise ``median`` or ``trimmed`` mean (cut ``beta``).

    Results keep each tensor's dtype; inputs are not modified.
    """
    if not updates:
        raise ValueError("updates: nothing to aggregate")
    if rule not in COORDINATE_RULES:
        raise ValueError(f"rule: expected one of {list(COORDINATE_RULES)}, got {rule!r}")
    out: dict[str, np.ndarray] = {}
    for name, first in updates[0].items():
        stacked = np.stack([np.asarray(u[name]) for u in updates])
        value = np.median(stacked, axis=0) if rule == "median" else trim_mean(stacked, beta)
        out[name] = np.asarray(value, dtype=first.dtype)
    return out


def krum_choice(
    updates: Sequence[Update],
    weights: Sequence[float],
    *,
    num_malicious: int,
    num_selected: int,
) -> list[int]:
    """Indices (into ``updates``) of the adapters Flower's Multi-Krum selects.

    ``num_selected == 1`` is Krum. The replies are handed to ``select_multikrum`` as
    the records a Flower strategy would see (the adapter, its example count).
    """
    if not updates:
        raise ValueError("updates: nothing to select from")
    if not 1 <= num_selected <= len(updates) or num_malicious < 0:
        raise ValueError(
            f"num_selected must lie in [1, {len(updates)}] and num_malicious >= 0, "
            f"got {num_selected} and {num_malicious}"
        )
    contents = [
        RecordDict(
            {
                "arrays": ArrayRecord({n: Array(np.asarray(v)) for n, v in update.items()}),
                "metrics": MetricRecord({_WEIGHT_KEY: float(weight)}),
            }
        )
        for update, weight in zip(updates, weights, strict=True)
    ]
    chosen = select_multikrum(
        contents, num_malicious_nodes=num_malicious, num_nodes_to_select=num_selected
    )
    position = {id(content): i for i, content in enumerate(contents)}
    return sorted(position[id(content)] for content in chosen)
