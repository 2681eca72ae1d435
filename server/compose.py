"""The one place a run's strategy is composed from its scenario.

From the inside out, by wrapping, never by flags:

1. the strategy's own aggregation (:attr:`StrategySpec.strategy
   <fedrank.tasks.registry.StrategySpec.strategy>`): the FRL vote, a FedAvg-family
   aggregator of Flower, or the LoRA aggregation, each behind the task codec's gate;
   with ``eval-fraction`` > 0, ``FederatedEvaluation`` around it (every site evaluates
   the global state on its held-out examples each round);
2. client-level DP (``dp`` = client or both): ``ClientLevelDp`` around it;
3. sample-level DP (``dp`` = sample or both): ``SampleLevelDpAudit``, so that every
   client's DP-SGD report is checked and recorded before its update is used;
4. in a simulation with an attack, the simulated adversary outermost: attackers are
   clients, so their replies are what every wrapper above receives.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from flwr.serverapp.strategy import Strategy

from fedrank.config import Scenario
from fedrank.errors import CheckpointError
from fedrank.privacy.bounds import AccountantBounds, scenario_bounds
from fedrank.privacy.ledger import PrivacyLedger, Unit
from fedrank.privacy.plan import (
    client_noise_multiplier,
    client_sample_rate,
    count_stddev,
    rqm_params,
)
from fedrank.privacy.report import LEDGER_FILES
from fedrank.privacy.sources import coordinator_source
from fedrank.protos.codecs import ArraysCodec, Codec
from fedrank.strategies.dp_client_level import AdaptiveClipping, ClientLevelDp
from fedrank.strategies.dp_client_rqm import ClientLevelRqm
from fedrank.strategies.dp_sample_level import SampleLevelDpAudit
from fedrank.strategies.evaluation import FederatedEvaluation
from fedrank.strategies.wrapping import StrategyWrapper

log = logging.getLogger(__name__)

StrategyBuilder = Callable[..., Strategy]


def open_ledger(directory: Path, unit: Unit, scenario: Scenario, *, fresh: bool) -> PrivacyLedger:
    """The ``unit`` ledger of the run in ``directory``.

    ``fresh``: a new run's, which must not exist yet (an earlier run's ledger is never
    removed: ``CheckpointError``); otherwise a resumed run's, with every release it holds
    (the checkpointer checks it against the checkpoint).
    """
    path = directory / LEDGER_FILES[unit]
    if fresh and path.exists():
        raise CheckpointError(
            f"{path} holds an earlier run's privacy releases: continue that run with "
            f"--resume {directory}, or give another --results-dir"
        )
    dp = scenario.dp
    budget = dp.target_epsilon if unit == "record" else dp.client_target_epsilon
    return PrivacyLedger(
        path,
        budget_epsilon=budget or None,
        delta=dp.delta,
        accountant=dp.accountant,
        bounds=ledger_bounds(scenario, unit),
    )


def ledger_bounds(scenario: Scenario, unit: Unit) -> AccountantBounds:
    """The accountant inputs an honest release of this run can hold, for ``unit``.

    Every release is checked against these before it is accounted (a client's report
    of sigma 1e-300 is refused as ``privacy_out_of_range``, never computed), narrowing
    :data:`~fedrank.privacy.bounds.ABSOLUTE_BOUNDS` (whose worst accountant call
    ``benchmarks/accountant_bounds.py`` measures) with what the scenario fixes:

    - delta: the run's;
    - releases per party: two per round (a resumed run may replay the round a crash
      interrupted, with other replies), which bounds the history's length and steps;
    - client level: the server's own releases, one step each at the run's sampling rate
      (m / N under Poisson sampling, else 1), and its sigma when it is configured;
    - record level (clients' DP-SGD reports): the sigma when ``dp-noise-multiplier``
      fixes it. A client derives its sampling rate and steps from its data size, which
      only the site knows, so those keep the absolute ranges.

    A sigma derived from a budget keeps the absolute range: it depends on ``rounds``,
    which a resumed run may raise, and the history recorded before stays valid.
    """
    dp, releases = scenario.dp, 2 * scenario.run.rounds
    if unit == "client":
        sigma = dp.client_noise_multiplier
        rate = client_sample_rate(scenario)
        return scenario_bounds(
            noise_multipliers=(sigma, sigma) if sigma > 0 else None,
            sample_rates=(rate, rate),
            max_steps_per_release=1,
            max_releases=releases,
            delta=dp.delta,
        )
    sigma = dp.noise_multiplier
    return scenario_bounds(
        noise_multipliers=(sigma, sigma) if sigma > 0 else None,
        max_releases=releases,
        delta=dp.delta,
    )


def _coordinates(codec: Codec) -> int:
    """Coordinates of the state an arrays codec carries (RQM is calibrated to them)."""
    layout = cast("ArraysCodec", codec).layout
    return sum(math.prod(shape) for shape, _ in layout.values())


def compose_strategy(
    scenario: Scenario,
    codec: Codec,
    partitions: Mapping[int, int],
    *,
    directory: Path,
    resumed: bool = False,
    wrap: StrategyWrapper | None = None,
) -> Strategy:
    """The run's strategy with its DP wrappers and, in a simulation, its adversary.

    Parameters
    ----------
    scenario : Scenario
        The run.
    codec : Codec
        The task's codec: the gate every reply passes.
    partitions : Mapping[int, int]
        Partition id -> node id, from discovery.
    directory : Path
        The results folder (privacy ledgers).
    resumed : bool
        Ledgers are reopened as they are instead of started empty.
    wrap : StrategyWrapper, optional
        A simulated adversary around the whole strategy.
    """
    module_name, _, function = scenario.spec.strategy.partition(":")
    build = cast("StrategyBuilder", getattr(importlib.import_module(module_name), function))
    strategy = build(scenario, codec=codec, partitions=partitions)
    if scenario.data.eval_fraction > 0:
        strategy = FederatedEvaluation(strategy, codec=codec, partitions=partitions)
    dp = scenario.dp
    if dp.enabled and not isinstance(codec, ArraysCodec):
        raise TypeError(f"DP needs float arrays on the wire, not a {type(codec).__name__}")
    if dp.client:
        extra: dict[str, Any] = {}
        if dp.rqm:
            extra["params"] = rqm_params(scenario, _coordinates(codec))
        wrapper = ClientLevelRqm if dp.rqm else ClientLevelDp
        strategy = wrapper(
            strategy,
            codec=cast("ArraysCodec", codec),
            ledger=open_ledger(directory, "client", scenario, fresh=not resumed),
            clip_norm=dp.client_clip_norm,
            # RQM adds no server noise (the argument is unused); Gaussian: sigma.
            noise_multiplier=1.0 if dp.rqm else client_noise_multiplier(scenario),
            expected_clients=scenario.run.clients_per_round,
            # The coordinator's secret root (private/ in the results folder), or the
            # seed's under the simulation-only dp-reproducible-noise.
            source=coordinator_source(
                directory,
                reproducible=dp.reproducible_noise,
                seed=scenario.run.seed,
                fresh=not resumed,
            ),
            sampling=dp.client_sampling,
            total_clients=scenario.run.num_clients,
            partitions=partitions,
            adaptive=AdaptiveClipping(
                target_quantile=dp.clip_quantile,
                learning_rate=dp.clip_learning_rate,
                count_stddev=count_stddev(scenario),
            )
            if dp.adaptive_clipping
            else None,
            publish_diagnostics=dp.publish_diagnostics,
            **extra,
        )
    if dp.sample:
        strategy = SampleLevelDpAudit(
            strategy,
            codec=cast("ArraysCodec", codec),
            ledger=open_ledger(directory, "record", scenario, fresh=not resumed),
            partitions=partitions,
            clip_norm=dp.clip_norm,
            noise_multiplier=dp.noise_multiplier or None,
        )
    if wrap is not None:
        strategy = wrap(strategy, partitions, codec)
    return strategy
