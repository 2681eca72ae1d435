"""The LoRA side of the ServerApp: strategy, privacy ledgers, evaluation and export.

The strategy is composed by wrapping, never by flags:

- ``LoraAggregation`` (FedIT, FFA-LoRA or SVD re-compression);
- client-level DP (``dp`` = client or both): ``ClientLevelDp`` around it;
- sample-level DP (``dp`` = sample or both): ``SampleLevelDpAudit`` outermost, so
  every client's DP-SGD report is checked and recorded before its update is used.

A release that would exceed a budget is never made: the run stops before it, says
so in the log and in ``summary.json`` (``stopped``), and exports the last released
adapter.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrank.config import Scenario
from fedrank.errors import PrivacyBudgetExhausted
from fedrank.lora_task import (
    client_noise_multiplier,
    client_sample_rate,
    evaluate_adapter,
    heldout_text,
    initial_adapter,
    lora_spec,
)
from fedrank.models.export import export_adapter
from fedrank.models.lora import build_lora_model, resolved_target_modules
from fedrank.models.model_card import DpGuarantee, ModelCard
from fedrank.privacy.ledger import PrivacyLedger, Unit
from fedrank.privacy.report import LEDGER_FILES, SETTINGS_FILE, privacy_summary
from fedrank.server.checkpoint import CheckpointState
from fedrank.server.loop import RoundCallback, run_rounds
from fedrank.server.results import ResultsWriter
from fedrank.server.resume import RunCheckpointer
from fedrank.strategies.dp_client_level import ClientLevelDp
from fedrank.strategies.dp_sample_level import SampleLevelDpAudit
from fedrank.strategies.lora import LoraAggregation
from fedrank.strategies.records import from_array_record, to_array_record
from fedrank.strategies.sampling import discover_partitions
from fedrank.strategies.wrapping import StrategyWrapper

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
"""The exported PEFT adapter folder inside the results folder."""


def privacy_settings(scenario: Scenario) -> dict[str, Any]:
    """What the run asks for, per privacy unit (``privacy.json``); None where it is off."""
    sample = scenario.dp in ("sample", "both")
    client = scenario.dp in ("client", "both")
    return {
        "dp": scenario.dp,
        "delta": scenario.dp_delta,
        "accountant": scenario.dp_accountant,
        "record": {
            "budget": scenario.dp_target_epsilon or None,
            "noise_multiplier": scenario.dp_noise_multiplier or "per client, from the budget",
            "clip_norm": scenario.dp_clip_norm,
        }
        if sample
        else None,
        "client": {
            "budget": scenario.dp_client_target_epsilon or None,
            "noise_multiplier": client_noise_multiplier(scenario),
            "clip_norm": scenario.dp_client_clip_norm,
            "sampling": scenario.dp_client_sampling,
            "sample_rate": client_sample_rate(scenario),
        }
        if client
        else None,
    }


def fresh_ledger(directory: Path, unit: Unit, scenario: Scenario) -> PrivacyLedger:
    """A new, empty ledger for ``unit`` (an earlier run's in the same folder is removed)."""
    path = directory / LEDGER_FILES[unit]
    if path.exists():
        log.warning("removing the earlier run's privacy ledger %s", path)
        path.unlink()
    return reopened_ledger(directory, unit, scenario)


def reopened_ledger(directory: Path, unit: Unit, scenario: Scenario) -> PrivacyLedger:
    """The ledger for ``unit`` in ``directory`` with every release it holds (a resumed
    run's: never deleted; the checkpointer checks it against the checkpoint)."""
    budget = scenario.dp_target_epsilon if unit == "record" else scenario.dp_client_target_epsilon
    return PrivacyLedger(
        directory / LEDGER_FILES[unit],
        budget_epsilon=budget or None,
        delta=scenario.dp_delta,
        accountant=scenario.dp_accountant,
    )


def make_lora_strategy(
    scenario: Scenario, partitions: dict[int, int], directory: Path, *, resumed: bool = False
) -> Strategy:
    """The scenario's LoRA strategy with its DP wrappers; ledgers start in ``directory``
    (empty, or as they are when the run is ``resumed``)."""
    ledger = reopened_ledger if resumed else fresh_ledger
    strategy: Strategy = LoraAggregation(
        partitions=partitions,
        clients_per_round=scenario.clients_per_round,
        seed=scenario.seed,
        mode=scenario.lora_aggregation,
        rank=scenario.lora_rank,
        min_replies=scenario.min_replies,
        robust=scenario.aggregation,
        trim_fraction=scenario.trim_fraction,
    )
    if scenario.dp in ("client", "both"):
        strategy = ClientLevelDp(
            strategy,
            ledger=ledger(directory, "client", scenario),
            clip_norm=scenario.dp_client_clip_norm,
            noise_multiplier=client_noise_multiplier(scenario),
            expected_clients=scenario.clients_per_round,
            seed=scenario.seed,
            sampling=scenario.dp_client_sampling,
            total_clients=scenario.num_clients,
            partitions=partitions,
        )
    if scenario.dp in ("sample", "both"):
        strategy = SampleLevelDpAudit(
            strategy,
            ledger=ledger(directory, "record", scenario),
            partitions=partitions,
            clip_norm=scenario.dp_clip_norm,
            noise_multiplier=scenario.dp_noise_multiplier or None,
        )
    return strategy


def run_lora_server(
    grid: Grid,
    scenario: Scenario,
    *,
    on_round: RoundCallback | None = None,
    resume_from: CheckpointState | None = None,
    wrap_strategy: StrategyWrapper | None = None,
) -> dict[str, Any]:
    """Run the LoRA federation described by ``scenario``; return its summary.

    Every round is checkpointed (:class:`fedrank.server.resume.RunCheckpointer`: the
    global adapter, the round, RNG and strategy state, the ledgers' positions). With
    ``resume_from`` the run continues after that checkpoint's round, its ledgers
    reopened as they are; client sampling and noise are seeded by (seed, round) and
    local training by (seed, round, partition), so the result is the uninterrupted
    run's. ``wrap_strategy`` (simulations only) wraps the whole strategy, DP wrappers
    included, e.g. in the adversary that controls the malicious partitions' replies:
    attackers are clients, so their replies are what the DP wrappers receive.
    """
    started = time.perf_counter()
    results = ResultsWriter(scenario.results_dir, append=resume_from is not None)
    directory = results.directory
    partitions = discover_partitions(
        grid, expected=scenario.num_clients, timeout=scenario.round_timeout
    )
    settings = privacy_settings(scenario)
    (directory / SETTINGS_FILE).write_text(
        json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    strategy = make_lora_strategy(scenario, partitions, directory, resumed=resume_from is not None)
    if wrap_strategy is not None:
        strategy = wrap_strategy(strategy, partitions)
    strategy.summary()
    checkpoints = RunCheckpointer(scenario, strategy)
    arrays, start_round = checkpoints.start(
        lambda: to_array_record(initial_adapter(scenario)),
        results=results,
        resume_from=resume_from,
    )
    latest = {"arrays": arrays}

    def evaluate(arrays: ArrayRecord) -> tuple[float, float]:
        latest["arrays"] = arrays  # every released global adapter is evaluated
        return evaluate_adapter(scenario, from_array_record(arrays))

    stopped: str | None = None
    try:
        run_rounds(
            grid,
            strategy,
            arrays=latest["arrays"],
            config=ConfigRecord(dict(scenario.to_run_config())),
            num_rounds=scenario.rounds,
            evaluate=evaluate,
            results=results,
            timeout=scenario.round_timeout,
            start_round=start_round,
            on_round=on_round,
            after_round=checkpoints.save,
            partition_of={node: pid for pid, node in partitions.items()},
        )
    except PrivacyBudgetExhausted as err:
        stopped = f"privacy budget: {err}"
        log.warning("fedrank: the run stops here. %s", err)
    final = from_array_record(latest["arrays"])
    rows = results.read_rounds()
    export_adapter(
        lora_spec(scenario),
        final,
        directory / ADAPTER_DIR,
        card=model_card(scenario, rows, directory, stopped),
        max_length=scenario.max_length,
    )
    results.plot_accuracy(
        rows, title=f"lora {scenario.model} on {scenario.dataset}, dp {scenario.dp}"
    )
    summary = {
        "scenario": scenario.to_run_config(),
        "final_accuracy": rows[-1]["accuracy"],
        "final_loss": rows[-1]["loss"],
        "best_accuracy": max(r["accuracy"] for r in rows),
        "rounds": rows[-1]["round"],
        "stopped": stopped,
        "skipped_rounds": sum(1 for r in rows if r.get("skipped")),
        "rejected_replies": sum(int(r.get("rejected", 0)) for r in rows),
        "seconds": time.perf_counter() - started,
        "resumed_after_round": None if resume_from is None else resume_from.round,
        "model": {"base": scenario.model, "adapter": ADAPTER_DIR, **lora_spec_summary(scenario)},
        "privacy": _privacy_totals(directory) if scenario.dp != "none" else None,
    }
    results.write_summary(summary)
    return summary


def lora_spec_summary(scenario: Scenario) -> dict[str, Any]:
    """The adapter's settings as plain JSON values."""
    spec = lora_spec(scenario)
    return {
        "r": spec.r,
        "lora_alpha": spec.lora_alpha,
        # As resolved: PEFT's default for the architecture unless the scenario named them.
        "target_modules": _as_json(resolved_target_modules(build_lora_model(spec))),
        "mode": spec.mode,
        "pooling": spec.pooling,
        "aggregation": scenario.lora_aggregation,
        "init_seed": spec.init_seed,
    }


def model_card(
    scenario: Scenario, rows: list[dict[str, Any]], directory: Path, stopped: str | None
) -> ModelCard:
    """The facts of this run for the exported adapter's model card."""
    privacy = []
    if scenario.dp != "none":
        summary = privacy_summary(directory)
        for unit in ("record", "client"):
            if unit in summary and summary[unit]["releases"]:
                sigmas = [
                    s for p in summary[unit]["parties"].values() for s in p["noise_multipliers"]
                ]
                privacy.append(
                    DpGuarantee(
                        unit,
                        epsilon=summary[unit]["max_epsilon"],
                        delta=scenario.dp_delta,
                        clip_norm=scenario.dp_clip_norm
                        if unit == "record"
                        else scenario.dp_client_clip_norm,
                        noise_multiplier=min(sigmas),
                        accountant=scenario.dp_accountant,
                    )
                )
    return ModelCard(
        data=f"{scenario.dataset} ({scenario.train_records or 'all'} training records, "
        f"{scenario.partitioner} partition)",
        rounds=int(rows[-1]["round"]),
        clients=scenario.num_clients,
        clients_per_round=scenario.clients_per_round,
        aggregation=scenario.lora_aggregation,
        accuracy=float(rows[-1]["accuracy"]),
        test_records=len(heldout_text(scenario)),
        privacy=tuple(privacy),
        notes=f"The run stopped early: {stopped.rstrip('.')}." if stopped else "",
    )


def _as_json(targets: tuple[str, ...] | str) -> list[str] | str:
    return targets if isinstance(targets, str) else list(targets)


def _privacy_totals(directory: Path) -> dict[str, Any]:
    summary = privacy_summary(directory)
    return {
        unit: {"releases": summary[unit]["releases"], "max_epsilon": summary[unit]["max_epsilon"]}
        for unit in LEDGER_FILES
        if unit in summary
    }
