"""Privacy accounting, mechanisms, the privacy ledger, secure randomness and audits."""

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
