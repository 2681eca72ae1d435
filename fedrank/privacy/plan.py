"""What a scenario's DP settings mean in numbers: sigmas, sampling rates, planned steps.

Both sides derive these from the scenario alone: the server to account and audit, a
client to calibrate its DP-SGD noise.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from fedrank.privacy.accountant import noise_multiplier_for_epsilon

if TYPE_CHECKING:
    from fedrank.config import Scenario


def steps_per_epoch(*, num_examples: int, batch_size: int) -> int:
    """Logical DP-SGD steps in one epoch: Opacus samples with rate ``1 / ceil(n / b)``."""
    return math.ceil(num_examples / batch_size)


def planned_steps(scenario: Scenario, num_examples: int) -> int:
    """DP-SGD steps of a client with ``num_examples`` records if it joins every round.

    An upper bound on what it takes when sampled in fewer rounds: noise planned for
    it keeps the budget whatever rounds the client is sampled in.
    """
    per_epoch = steps_per_epoch(num_examples=num_examples, batch_size=scenario.train.batch_size)
    return scenario.run.rounds * scenario.train.local_epochs * per_epoch


@functools.cache
def sample_noise_multiplier(scenario: Scenario, num_examples: int) -> float:
    """A client's DP-SGD sigma: ``dp-noise-multiplier``, or the least keeping the budget.

    With ``dp-target-epsilon`` the whole run's planned steps (:func:`planned_steps`) at
    this client's sampling rate must spend at most it.
    """
    dp = scenario.dp
    if dp.noise_multiplier > 0:
        return dp.noise_multiplier
    per_epoch = steps_per_epoch(num_examples=num_examples, batch_size=scenario.train.batch_size)
    return noise_multiplier_for_epsilon(
        target_epsilon=dp.target_epsilon,
        delta=dp.delta,
        sample_rate=1.0 / per_epoch,
        steps=planned_steps(scenario, num_examples),
        accountant=dp.accountant,
    )


def client_sample_rate(scenario: Scenario) -> float:
    """q of client-level accounting: m / N under Poisson sampling, else 1 (no amplification)."""
    if scenario.dp.client_sampling == "poisson":
        return scenario.run.clients_per_round / scenario.run.num_clients
    return 1.0


@functools.cache
def client_noise_multiplier(scenario: Scenario) -> float:
    """Client-level sigma: as configured, or the least that keeps the budget over the rounds."""
    dp = scenario.dp
    if dp.client_noise_multiplier > 0:
        return dp.client_noise_multiplier
    return noise_multiplier_for_epsilon(
        target_epsilon=dp.client_target_epsilon,
        delta=dp.delta,
        sample_rate=client_sample_rate(scenario),
        steps=scenario.run.rounds,
        accountant=dp.accountant,
    )


def privacy_settings(scenario: Scenario) -> dict[str, Any]:
    """What the run asks for, per privacy unit (``privacy.json``); None where it is off."""
    dp = scenario.dp
    return {
        "dp": dp.mode,
        "delta": dp.delta,
        "accountant": dp.accountant,
        "record": {
            "budget": dp.target_epsilon or None,
            "noise_multiplier": dp.noise_multiplier or "per client, from the budget",
            "clip_norm": dp.clip_norm,
        }
        if dp.sample
        else None,
        "client": {
            "budget": dp.client_target_epsilon or None,
            "noise_multiplier": client_noise_multiplier(scenario),
            "clip_norm": dp.client_clip_norm,
            "sampling": dp.client_sampling,
            "sample_rate": client_sample_rate(scenario),
        }
        if dp.client
        else None,
    }
