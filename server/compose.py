"""The one place a run's strategy is composed from its scenario.

From the inside out, by wrapping, never by flags:

1. the strategy's own aggregation (:attr:`StrategySpec.strategy
   <fedrank.tasks.registry.StrategySpec.strategy>`): the FRL vote, a FedAvg-family
   aggregator of Flower, or the LoRA aggregation, each behind the task codec's gate;
2. client-level DP (``dp`` = client or both): ``ClientLevelDp`` around it;
3. sample-level DP (``dp`` = sample or both): ``SampleLevelDpAudit``, so that every
   client's DP-SGD report is checked and recorded before its update is used;
4. in a simulation with an attack, the simulated adversary outermost: attackers are
   clients, so their replies are what every wrapper above receives.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

from flwr.serverapp.strategy import Strategy

from fedrank.config import Scenario
from fedrank.privacy.ledger import PrivacyLedger, Unit
from fedrank.privacy.plan import client_noise_multiplier
from fedrank.privacy.report import LEDGER_FILES
from fedrank.protos.codecs import ArraysCodec, Codec
from fedrank.strategies.dp_client_level import ClientLevelDp
from fedrank.strategies.dp_sample_level import SampleLevelDpAudit
from fedrank.strategies.wrapping import StrategyWrapper

log = logging.getLogger(__name__)

StrategyBuilder = Callable[..., Strategy]


def open_ledger(directory: Path, unit: Unit, scenario: Scenario, *, fresh: bool) -> PrivacyLedger:
    """The ``unit`` ledger of the run in ``directory``.

    ``fresh``: a new run's, empty (an earlier run's file there is removed); otherwise a
    resumed run's, with every release it holds (never deleted; the checkpointer checks
    it against the checkpoint).
    """
    path = directory / LEDGER_FILES[unit]
    if fresh and path.exists():
        log.warning("removing the earlier run's privacy ledger %s", path)
        path.unlink()
    dp = scenario.dp
    budget = dp.target_epsilon if unit == "record" else dp.client_target_epsilon
    return PrivacyLedger(
        path, budget_epsilon=budget or None, delta=dp.delta, accountant=dp.accountant
    )


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
    dp = scenario.dp
    if dp.enabled and not isinstance(codec, ArraysCodec):
        raise TypeError(f"DP needs float arrays on the wire, not a {type(codec).__name__}")
    if dp.client:
        strategy = ClientLevelDp(
            strategy,
            codec=cast("ArraysCodec", codec),
            ledger=open_ledger(directory, "client", scenario, fresh=not resumed),
            clip_norm=dp.client_clip_norm,
            noise_multiplier=client_noise_multiplier(scenario),
            expected_clients=scenario.run.clients_per_round,
            seed=scenario.run.seed,
            sampling=dp.client_sampling,
            total_clients=scenario.run.num_clients,
            partitions=partitions,
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
