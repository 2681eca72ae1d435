"""What a scenario's DP settings mean in numbers: sigmas, sampling rates, planned steps.

Both sides derive these from the scenario alone: the server to account and audit, a
client to calibrate its DP-SGD noise.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from fedrank.errors import ConfigError
from fedrank.privacy.accountant import noise_multiplier_for_epsilon
from fedrank.privacy.adaptive_clipping import update_noise_multiplier
from fedrank.privacy.relation import client_sampling_rate
from fedrank.privacy.release import Release
from fedrank.privacy.report import claim_settings
from fedrank.privacy.rqm import RqmParams, rqm_bits_per_coordinate
from fedrank.privacy.rqm_accounting import rqm_extension_for_epsilon

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


def planned_release(
    scenario: Scenario, num_examples: int, *, server_round: int, party: str
) -> Release:
    """The DP-SGD release a site with ``num_examples`` records makes in one round.

    Opacus samples each logical batch with rate ``1 / ceil(n / batch-size)`` and takes
    ``local-epochs`` times that many steps; sigma is :func:`sample_noise_multiplier`.
    """
    per_epoch = steps_per_epoch(num_examples=num_examples, batch_size=scenario.train.batch_size)
    return Release(
        round=server_round,
        mechanism="dp-sgd",
        noise_multiplier=sample_noise_multiplier(scenario, num_examples),
        sample_rate=1.0 / per_epoch,
        steps=scenario.train.local_epochs * per_epoch,
        clip_norm=scenario.dp.clip_norm,
        unit="record",
        party=party,
    )


def client_sample_rate(scenario: Scenario) -> float:
    """q of client-level accounting (:func:`fedrank.privacy.relation.client_sampling_rate`)."""
    return client_sampling_rate(
        sampling=scenario.dp.client_sampling,
        clients_per_round=scenario.run.clients_per_round,
        total_clients=scenario.run.num_clients,
    )


def count_stddev(scenario: Scenario) -> float:
    """sigma_b of adaptive clipping: ``dp-count-stddev``, or expected clients / 20."""
    return scenario.dp.count_stddev or scenario.run.clients_per_round / 20


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


def check_plan(scenario: Scenario) -> None:
    """Refuse, before anything starts, a client-level plan that cannot run.

    Raises
    ------
    ConfigError
        No sigma meets ``dp-client-target-epsilon`` (``target_epsilon``), or adaptive
        clipping's count noise leaves no room for the sigma (``dp-count-stddev``).
    """
    if not scenario.dp.client or scenario.dp.rqm:
        return
    sigma = client_noise_multiplier(scenario)
    if scenario.dp.adaptive_clipping:
        try:
            update_noise_multiplier(noise_multiplier=sigma, count_stddev=count_stddev(scenario))
        except ConfigError as err:
            raise ConfigError("dp-count-stddev", str(err).split(": ", 1)[-1]) from err


WITHHELD_UNDER_DP = ("num-examples", "train-loss", "steps")
"""Reply metrics a client does not send under DP (noiseless, outside the accounting)."""
CLIENT_DIAGNOSTICS = ("dp-clip-fraction", "replies", "rejected.<reason> of invalid replies")
"""What client-level DP could publish beside its release; withheld unless
``dp-publish-diagnostics`` (then outside the guarantee)."""
SERVER_LOG = (
    "clients",
    "missing",
    "rejected.<reason> of failed clients and site refusals",
    "bytes_up_per_client",
    "bytes_down_per_client",
    "seconds",
)
"""Per-round figures ``metrics.jsonl`` always has: the coordinator's own operations log,
outside the guarantee (the number of clients messaged reveals the Poisson sample's
size; keep the file with the coordinator if that matters)."""


@functools.cache
def rqm_params(scenario: Scenario, coordinates: int) -> RqmParams:
    """RQM's parameters for a client whose update has ``coordinates`` coordinates.

    c is ``dp-client-clip-norm`` (L2 clipping: every coordinate within [-c, c]); Delta
    the least that keeps ``dp-client-target-epsilon`` for a client sending in every
    round (an upper bound on what one sampled in fewer spends).
    """
    dp = scenario.dp
    extension = rqm_extension_for_epsilon(
        target_epsilon=dp.client_target_epsilon,
        clip=dp.client_clip_norm,
        levels=dp.rqm_levels,
        keep_probability=dp.rqm_keep_probability,
        dimension=coordinates,
        rounds=scenario.run.rounds,
        delta=dp.delta,
    )
    return RqmParams(
        clip=dp.client_clip_norm,
        extension=extension,
        levels=dp.rqm_levels,
        keep_probability=dp.rqm_keep_probability,
    )


def privacy_settings(scenario: Scenario) -> dict[str, Any]:
    """What the run asks for, per privacy unit (``privacy.json``); None where it is off.

    Besides the settings: the neighbouring relation, the noise source (``"secure"`` or
    ``"reproducible"``) with the note a reproducible run carries, and what is withheld
    or published outside the guarantee.
    """
    dp = scenario.dp
    return {
        "dp": dp.mode,
        **claim_settings(dp.noise_kind),
        "withheld": list(WITHHELD_UNDER_DP)
        + ([] if dp.publish_diagnostics or not dp.client else list(CLIENT_DIAGNOSTICS)),
        "outside_guarantee": list(SERVER_LOG)
        + (list(CLIENT_DIAGNOSTICS) if dp.publish_diagnostics else []),
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
            "mechanism": dp.client_mechanism,
            "noise_multiplier": None if dp.rqm else client_noise_multiplier(scenario),
            "rqm": {
                "levels": dp.rqm_levels,
                "keep_probability": dp.rqm_keep_probability,
                "bits_per_coordinate": rqm_bits_per_coordinate(dp.rqm_levels),
            }
            if dp.rqm
            else None,
            "clip_norm": dp.client_clip_norm,
            "sampling": dp.client_sampling,
            "sample_rate": client_sample_rate(scenario),
            "adaptive_clipping": {
                "target_quantile": dp.clip_quantile,
                "learning_rate": dp.clip_learning_rate,
                "count_stddev": count_stddev(scenario),
            }
            if dp.adaptive_clipping
            else None,
        }
        if dp.client
        else None,
    }
