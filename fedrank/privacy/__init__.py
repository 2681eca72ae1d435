"""Privacy accounting, mechanisms and the privacy ledger."""

from fedrank.privacy.accountant import compute_epsilon, noise_multiplier_for_epsilon
from fedrank.privacy.ledger import PrivacyLedger, Release
from fedrank.privacy.mechanisms import (
    client_level_dp_aggregate,
    clip_by_l2_norm,
    gaussian_noise_like,
    l2_norm,
)

__all__ = [
    "PrivacyLedger",
    "Release",
    "client_level_dp_aggregate",
    "clip_by_l2_norm",
    "compute_epsilon",
    "gaussian_noise_like",
    "l2_norm",
    "noise_multiplier_for_epsilon",
]
