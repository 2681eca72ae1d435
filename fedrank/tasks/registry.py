"""Which strategies fedrank runs, and what each needs: light metadata, no torch.

Adding a kind of learning is one task module (``fedrank/tasks/<name>.py``, a class
implementing :class:`fedrank.tasks.base.Task`) plus one entry here. The configuration
checks a scenario against these entries before anything starts; the server and the
ClientApp load the task named by the entry.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

UpdateKind = Literal["ranking", "weights", "adapter"]
DataKind = Literal["image", "text"]


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    """What a scenario's ``strategy`` means.

    Parameters
    ----------
    name : str
        The value of ``strategy`` in a scenario.
    task : str
        ``module:Class`` of the task that trains it (imported when a run starts).
    strategy : str
        ``module:function`` building the server strategy from the scenario, the task's
        codec and the partitions (:func:`fedrank.server.compose.compose_strategy`).
    update : {"ranking", "weights", "adapter"}
        What a client sends back: which attacks and privacy mechanisms apply.
    data : {"image", "text"}
        The data it learns from.
    default_lr : float
        The local learning rate when ``lr`` is 0 (tuned per strategy: supermask
        scores need a much larger step than dense weights).
    aggregators : tuple of str
        Accepted ``aggregator`` values; the first is the plain rule (``auto``).
    default_model : str
        The model when the scenario names none of this data kind.
    default_dataset : str
        The dataset when the scenario names none of this data kind.
    sections : tuple of str
        The scenario sections only this kind of strategy uses (printed at start).
    """

    name: str
    task: str
    strategy: str
    update: UpdateKind
    data: DataKind
    default_lr: float
    aggregators: tuple[str, ...]
    default_model: str
    default_dataset: str
    sections: tuple[str, ...] = ()

    @property
    def privacy(self) -> bool:
        """Differential privacy applies (float updates of a pretrained model)."""
        return self.update == "adapter"


_FEDAVG_RULES = ("mean", "trimmed", "median", "krum", "multikrum")
FLOWER_BASELINES: tuple[str, ...] = ("bulyan", "fedavgm", "fedadam", "fedyogi", "fedprox")
"""Flower's Bulyan, server optimizers and FedProx (:mod:`fedrank.strategies.baselines`):
aggregators of every task whose state is float arrays (dense weights, LoRA adapters)."""

STRATEGIES: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec(
            name="frl",
            task="fedrank.tasks.image:ImageTask",
            strategy="fedrank.strategies.frl:frl_strategy",
            update="ranking",
            data="image",
            default_lr=1.0,
            aggregators=("borda", "filtered", "clipped", "trimmed", "median"),
            default_model="mlp",
            default_dataset="mnist5k",
            sections=("frl",),
        ),
        StrategySpec(
            name="fedavg",
            task="fedrank.tasks.image:ImageTask",
            strategy="fedrank.strategies.robust_fedavg:fedavg_strategy",
            update="weights",
            data="image",
            default_lr=0.1,
            aggregators=(*_FEDAVG_RULES, *FLOWER_BASELINES),
            default_model="mlp",
            default_dataset="mnist5k",
        ),
        StrategySpec(
            name="lora",
            task="fedrank.tasks.text_lora:TextLoraTask",
            strategy="fedrank.strategies.lora:lora_strategy",
            update="adapter",
            data="text",
            # AdamW on the adapter and the head: the usual LoRA fine-tuning rate.
            default_lr=5e-4,
            # "mean" is the lora-aggregation average; median, trimmed and the Krums are
            # Flower's rules applied to the validated adapters (strategies.lora_robust);
            # the baselines are Flower's strategies on the adapter tensors (FedIT: A and
            # B per tensor; FFA: B only), refused with svd and under client-level DP.
            aggregators=(*_FEDAVG_RULES, *FLOWER_BASELINES),
            default_model="minilm",
            default_dataset="rotten-tomatoes",
            sections=("lora", "dp"),
        ),
    )
}
