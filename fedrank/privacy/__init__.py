"""Privacy accounting, mechanisms, the privacy ledger, secure randomness and audits.

The names below are imported on first use (PEP 562), so that importing one light
module of this package (``fedrank.privacy.relation``, which the configuration uses)
does not load torch, Opacus and SciPy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedrank.privacy.accountant import compute_epsilon, noise_multiplier_for_epsilon
    from fedrank.privacy.bounds import ABSOLUTE_BOUNDS, AccountantBounds, scenario_bounds
    from fedrank.privacy.ledger import PrivacyLedger, Release, dp_sgd_release
    from fedrank.privacy.mechanisms import (
        client_level_dp_aggregate,
        clip_by_l2_norm,
        gaussian_noise_like,
        l2_norm,
    )
    from fedrank.privacy.randomness import NOT_PRIVATE_NOTE, RandomSource, SourceState
    from fedrank.privacy.relation import NEIGHBOURING_RELATION, client_sampling_rate

_HOMES = {
    "compute_epsilon": "accountant",
    "noise_multiplier_for_epsilon": "accountant",
    "ABSOLUTE_BOUNDS": "bounds",
    "AccountantBounds": "bounds",
    "scenario_bounds": "bounds",
    "PrivacyLedger": "ledger",
    "Release": "ledger",
    "dp_sgd_release": "ledger",
    "client_level_dp_aggregate": "mechanisms",
    "clip_by_l2_norm": "mechanisms",
    "gaussian_noise_like": "mechanisms",
    "l2_norm": "mechanisms",
    "NOT_PRIVATE_NOTE": "randomness",
    "RandomSource": "randomness",
    "SourceState": "randomness",
    "NEIGHBOURING_RELATION": "relation",
    "client_sampling_rate": "relation",
}

__all__ = [
    "ABSOLUTE_BOUNDS",
    "NEIGHBOURING_RELATION",
    "NOT_PRIVATE_NOTE",
    "AccountantBounds",
    "PrivacyLedger",
    "RandomSource",
    "Release",
    "SourceState",
    "client_level_dp_aggregate",
    "client_sampling_rate",
    "clip_by_l2_norm",
    "compute_epsilon",
    "dp_sgd_release",
    "gaussian_noise_like",
    "l2_norm",
    "noise_multiplier_for_epsilon",
    "scenario_bounds",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedrank.privacy.{home}"), name)
