"""The simulated-attack section of a scenario (docs/robustness.md; simulations only).

Attack papers: FRL reverse ranking (arXiv 2110.04350, Sec. 5); "a little is enough"
(arXiv 1902.06156); min-max / min-sum (Shejwalkar & Houmansadr, NDSS 2021,
"Manipulating the Byzantine").
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from fedrank.config.fields import check_section, setting
from fedrank.config.sections import MAX_SEED
from fedrank.errors import ConfigError

AttackKind = Literal[
    "none",
    "reverse_ranking", "random_ranking", "mask_boundary", "adaptive_reverse", "adaptive_boundary",
    "sign_flip", "scaling", "gaussian_noise", "alie", "min_max", "min_sum",
    "label_flip", "withhold",
]  # fmt: skip
AttackDirection = Literal["inverse_std", "inverse_unit", "inverse_sign"]
FlipRule = Literal["reverse", "shift", "random", "targeted"]
Knowledge = Literal["colluders", "all"]

RANKING_ATTACKS: frozenset[str] = frozenset(
    {"reverse_ranking", "random_ranking", "mask_boundary", "adaptive_reverse", "adaptive_boundary"}
)
"""Attacks that craft rankings: they need a strategy whose clients send rankings."""
UPDATE_ATTACKS: frozenset[str] = frozenset(
    {"sign_flip", "scaling", "gaussian_noise", "alie", "min_max", "min_sum"}
)
"""Attacks that craft float updates (weights or adapters)."""
DATA_ATTACKS: frozenset[str] = frozenset({"label_flip"})
"""Attacks that poison a client's data and send an honest reply of it."""
ANY_STRATEGY_ATTACKS: frozenset[str] = DATA_ATTACKS | {"withhold"}
"""Attacks that fit every strategy: label flipping, and ``withhold`` (the malicious clients'
replies never reach the server's rule: the reference a robust rule is measured against)."""


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Which attack the colluding malicious clients run, on how many, with what."""

    PREFIX: ClassVar[str] = "attack-"

    kind: AttackKind = setting("none", "the malicious clients' behaviour", key="attack")
    fraction: float = setting(
        0.0, "share of the clients that are malicious", low=0.0, high=1.0, high_open=True,
        key="malicious-fraction",
    )  # fmt: skip
    seed: int = setting(0, "seeds the choice of malicious clients", low=0, high=MAX_SEED)
    knowledge: Knowledge = setting(
        "colluders", "benign updates the update attacks see: their own, or all"
    )
    scale: float = setting(-5.0, "scaling: factor of the reversed update")
    noise_std: float = setting(1.0, "gaussian_noise: standard deviation", low=0.0, low_open=True)
    z_max: float = setting(0.0, "alie: deviation in standard deviations; 0: automatic", low=0.0)
    direction: AttackDirection = setting("inverse_std", "min_max / min_sum perturbation")
    boundary_fraction: float = setting(
        0.05, "mask_boundary: share moved on each side of the boundary", low=0.0, high=1.0,
        low_open=True,
    )  # fmt: skip
    flip_rule: FlipRule = setting("reverse", "label_flip: reverse, shift, random or targeted")
    source_class: int = setting(1, "label_flip targeted: the class relabelled", low=0)
    target_class: int = setting(7, "label_flip targeted: the label it gets", low=0)

    def __post_init__(self) -> None:
        check_section(self)
        if self.scale == 0.0:
            raise ConfigError("attack-scale", "must be non-zero")
        if self.kind == "none" and self.fraction > 0.0:
            raise ConfigError(
                "malicious-fraction", f"is {self.fraction} but attack is 'none': name an attack"
            )
        if self.flip_rule == "targeted" and self.source_class == self.target_class:
            raise ConfigError("attack-target-class", "must differ from attack-source-class")

    @property
    def enabled(self) -> bool:
        """An attack is simulated."""
        return self.kind != "none"
