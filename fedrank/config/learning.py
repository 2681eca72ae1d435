"""The FRL, aggregation and LoRA-adapter sections of a scenario."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from fedrank.config.fields import check_section, setting
from fedrank.errors import ConfigError

LoraAggregation = Literal["fedit", "ffa", "svd"]
LoraPooling = Literal["mean", "cls"]


@dataclasses.dataclass(frozen=True)
class FrlConfig:
    """Federated Rank Learning (arXiv 2110.04350): the supermask every party builds."""

    PREFIX: ClassVar[str] = ""

    k: float = setting(0.5, "kept fraction of each layer's edges", low=0.0, high=1.0, low_open=True)
    rank_bits: int = setting(
        0,
        "uplink: each edge's rank bucket in this many bits (2**b equal buckets, "
        "floor(rank * 2**b / n)); 0: the full ranking",
        low=0,
        high=16,
    )
    # docs/robustness.md, "Heterogeneous data": the vote's smoothing across rounds.
    vote_smoothing: float = setting(
        0.0,
        "FRL vote: in round t the global ranking sent counts as vote-smoothing x t mean replies",
        low=0.0,
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclasses.dataclass(frozen=True)
class AggregationConfig:
    """How the server combines the replies of a round."""

    PREFIX: ClassVar[str] = ""

    rule: str = setting(
        "auto",
        "frl: borda, filtered, clipped, trimmed, median; fedavg and lora: mean, median, trimmed, "
        "krum, multikrum, bulyan, fedavgm, fedadam, fedyogi, fedprox; auto: the strategy's plain "
        "rule",
        key="aggregator",
    )
    trim_fraction: float = setting(
        0.2,
        "trimmed rules: the cut at each end; krum: the malicious share f",
        low=0.0,
        high=0.5,
        high_open=True,
    )
    filter_mads: float = setting(
        5.0, "filtered vote: set a reply aside this many MADs below the median (clipped: "
        "clip it to that distance)", low=0.0,
        low_open=True,
    )  # fmt: skip
    server_lr: float = setting(
        0.0,
        "fedavgm, fedadam, fedyogi: the server's learning rate on the pseudo-gradient; "
        "0: the aggregator's default (fedavgm 1, fedadam and fedyogi 0.01)",
        low=0.0,
    )
    server_momentum: float = setting(
        0.5, "fedavgm: server momentum", low=0.0, high=1.0, high_open=True
    )
    server_beta1: float = setting(
        0.9, "fedadam, fedyogi: first-moment decay", low=0.0, high=1.0, high_open=True
    )
    server_beta2: float = setting(
        0.99, "fedadam, fedyogi: second-moment decay", low=0.0, high=1.0, high_open=True
    )
    server_tau: float = setting(
        1e-3, "fedadam, fedyogi: adaptivity (added to the root of the second moment)", low=0.0,
        low_open=True,
    )  # fmt: skip
    proximal_mu: float = setting(
        0.01, "fedprox: weight of the clients' proximal term (mu / 2) ||w - w_global||^2",
        low=0.0,
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_section(self)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """The LoRA adapter (Hu et al., arXiv 2106.09685) and its federated aggregation."""

    PREFIX: ClassVar[str] = "lora-"

    aggregation: LoraAggregation = setting(
        "fedit", "fedit (average A and B), ffa (A frozen, average B), svd (re-compress B A)"
    )
    rank: int = setting(8, "adapter rank r", low=1)
    alpha: int = setting(16, "scaling numerator: the update is (alpha / r) B A", low=1)
    dropout: float = setting(
        0.0, "dropout on the adapter's input", low=0.0, high=1.0, high_open=True
    )
    targets: str = setting(
        "", "comma-separated module names to adapt; empty: PEFT's default for the architecture"
    )
    head_lr: float = setting(0.0, "learning rate of the classification head; 0: lr", low=0.0)
    pooling: LoraPooling = setting(
        "mean", "what the head reads: mean of the token states, or the model's own (cls)"
    )

    def __post_init__(self) -> None:
        check_section(self)
        names = [t.strip() for t in self.targets.split(",")] if self.targets else []
        if not all(name.replace(".", "_").isidentifier() for name in names):
            raise ConfigError(
                "lora-targets", f"must be comma-separated module names, got {self.targets!r}"
            )

    @property
    def target_modules(self) -> tuple[str, ...]:
        """The named target modules (empty: the architecture's default)."""
        return tuple(t.strip() for t in self.targets.split(",")) if self.targets else ()
