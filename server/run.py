"""The one run function of the ServerApp, for every task, in simulation and deployment.

:func:`run_federation` discovers the nodes (and hands each the run's client settings),
composes the strategy (:mod:`fedrank.server.compose`), starts fresh or from a
checkpoint, runs the rounds (:mod:`fedrank.server.loop`), evaluates every released
global state on the held-out test split, exports the final model through the task
and writes ``summary.json``. A release that would exceed a privacy budget is never
made: the run stops before it, says so in the log and in ``summary.json``
(``stopped``), and exports the last released state.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedrank.artifacts import FINAL_STATE, write_arrays
from fedrank.config import Scenario
from fedrank.devices import describe_device
from fedrank.errors import PrivacyBudgetExhausted
from fedrank.privacy.plan import privacy_settings
from fedrank.privacy.report import (
    LEDGER_FILES,
    NOISE_KEY,
    NOTE_KEY,
    SETTINGS_FILE,
    privacy_summary,
)
from fedrank.protos import keys
from fedrank.protos.records import from_array_record, to_array_record
from fedrank.server.checkpoint import CheckpointState
from fedrank.server.compose import compose_strategy
from fedrank.server.loop import RoundCallback, run_rounds
from fedrank.server.results import ResultsWriter
from fedrank.server.resume import RunCheckpointer
from fedrank.strategies.sampling import EngineMap, find_partitions
from fedrank.strategies.wrapping import StrategyWrapper
from fedrank.tasks import load_task

log = logging.getLogger(__name__)


def run_federation(
    grid: Grid,
    scenario: Scenario,
    *,
    on_round: RoundCallback | None = None,
    resume_from: CheckpointState | None = None,
    wrap_strategy: StrategyWrapper | None = None,
    engine_nodes: EngineMap | None = None,
) -> dict[str, Any]:
    """Run the whole federation described by ``scenario``; return its summary.

    With ``resume_from`` (:func:`fedrank.server.resume.latest_checkpoint`) the run
    continues after that checkpoint's round, privacy ledgers reopened as they are. What
    is seeded (sampling without DP, local training) is redone as before; DP noise and
    privacy sampling come from secret sources (the coordinator's key is read back from
    its private file; sites draw fresh noise), so a resumed DP run is a valid run of
    the same scenario, bit-identical to the uninterrupted one only under the
    simulation-only ``dp-reproducible-noise``, and its epsilon never goes down.
    ``wrap_strategy``
    (simulations only) wraps the whole strategy in an adversary that controls the
    malicious partitions' replies. ``engine_nodes`` (a ServerApp beside Flower's
    simulation engine) reads the engine's node map instead of asking every node
    (:func:`~fedrank.strategies.sampling.find_partitions`).
    """
    started = time.perf_counter()
    task = load_task(scenario)
    task.check()
    results = ResultsWriter(scenario.output.results_dir, append=resume_from is not None)
    directory = results.directory
    settings = ConfigRecord(dict(scenario.client_settings()))
    # A run that fails to start leaves its results folder as it found it.
    with results.starting():
        partitions, unasked = find_partitions(
            grid,
            engine_nodes=engine_nodes,
            expected=scenario.run.num_clients,
            seed=scenario.run.seed,
            minimum=scenario.run.required_clients,
            timeout=scenario.run.discovery_timeout,
            connect_timeout=scenario.run.connect_timeout,
            settings=settings,
        )
        if scenario.dp.enabled:
            (directory / SETTINGS_FILE).write_text(
                json.dumps(privacy_settings(scenario), indent=2, sort_keys=True) + "\n",
                encoding="utf-8",
            )
        strategy = compose_strategy(
            scenario,
            task.codec(grid.run.run_id),
            partitions,
            directory=directory,
            resumed=resume_from is not None,
            wrap=wrap_strategy,
        )
        strategy.summary()
        checkpoints = RunCheckpointer(scenario, strategy)
        arrays, start_round = checkpoints.start(
            lambda: to_array_record(task.initial_state()), results=results, resume_from=resume_from
        )
    released = {"arrays": arrays}

    def evaluate(arrays: ArrayRecord) -> tuple[float, float]:
        released["arrays"] = arrays  # every released global state is evaluated
        return task.evaluate(from_array_record(arrays))

    stopped: str | None = None
    try:
        run_rounds(
            grid,
            strategy,
            arrays=arrays,
            config=ConfigRecord({keys.SETTINGS_DIGEST: scenario.settings_digest()}),
            settings=settings,
            num_rounds=scenario.run.rounds,
            evaluate=evaluate,
            results=results,
            timeout=scenario.run.round_timeout,
            start_round=start_round,
            on_round=on_round,
            after_round=checkpoints.save,
            partition_of={node: pid for pid, node in partitions.items()},
            unasked=unasked,
        )
    except PrivacyBudgetExhausted as err:
        stopped = f"privacy budget: {err}"
        log.warning("fedrank: the run stops here. %s", err)
    rows = results.read_rounds()
    facts: dict[str, Any] = {
        "rounds": rows[-1]["round"],
        "final_accuracy": rows[-1]["accuracy"],
        "stopped": stopped,
        "privacy": privacy_summary(directory) if scenario.dp.enabled else None,
    }
    final = from_array_record(released["arrays"])
    write_arrays(directory / FINAL_STATE, final)
    model = task.export(final, directory, facts)
    eff = scenario.effective
    results.plot_accuracy(rows, title=f"{eff.spec.name} {eff.model} on {eff.dataset}")
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
        "model": model,
        "privacy": _privacy_totals(facts["privacy"]) if facts["privacy"] else None,
        "device": describe_device(task.device),  # where the server evaluated
    }
    results.write_summary(summary)
    return summary


def _privacy_totals(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``'s privacy, from the ledgers' summary: releases and epsilon per
    unit, the noise source and, for reproducible noise, the note that the run is not
    private."""
    settings = summary["settings"]
    return {
        **{
            unit: {
                "releases": summary[unit]["releases"],
                "max_epsilon": summary[unit]["max_epsilon"],
            }
            for unit in LEDGER_FILES
            if unit in summary
        },
        NOISE_KEY: settings.get(NOISE_KEY),
        NOTE_KEY: settings.get(NOTE_KEY),
    }
