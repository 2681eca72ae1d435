"""The fedrank Flower ``ServerApp``.

``app`` reads the scenario from the Flower run config (``[tool.flwr.app.config]``,
overridable with ``flwr run . --run-config``); ``make_server_app`` builds the same
app around a scenario object, which ``fedrank simulate`` uses.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.server.checkpoint import CheckpointState
from fedrank.server.loop import RoundCallback, run_rounds
from fedrank.server.results import ResultsWriter
from fedrank.server.resume import RunCheckpointer
from fedrank.server.status import serve_status
from fedrank.strategies.frl import FrlVote
from fedrank.strategies.ranking import top_k_mask
from fedrank.strategies.ranking_wire import RankingWire
from fedrank.strategies.records import from_array_record, to_array_record
from fedrank.strategies.robust_fedavg import seeded_fedavg
from fedrank.strategies.sampling import discover_partitions
from fedrank.strategies.votes import rank_vote
from fedrank.strategies.wrapping import StrategyWrapper
from fedrank.task import initial_state, is_dense, load_state, model_for, test_data
from fedrank.training import evaluate

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT = 120.0  # seconds; replies come as soon as the actors are up


def make_strategy(scenario: Scenario, partitions: dict[int, int], *, run_id: int) -> Strategy:
    """The scenario's strategy and aggregator over the discovered partitions of Flower
    run ``run_id``."""
    if scenario.strategy == "fedavg":
        return seeded_fedavg(
            scenario.aggregation,
            partitions=partitions,
            clients_per_round=scenario.clients_per_round,
            seed=scenario.seed,
            min_replies=scenario.min_replies,
            trim_fraction=scenario.trim_fraction,
        )
    return FrlVote(
        partitions=partitions,
        clients_per_round=scenario.clients_per_round,
        wire=RankingWire.for_scenario(scenario, run_id=run_id),
        min_replies=scenario.min_replies,
        seed=scenario.seed,
        vote=rank_vote(
            scenario.aggregation,
            trim_fraction=scenario.trim_fraction,
            filter_mads=scenario.filter_mads,
        ),
        smoothing=scenario.vote_smoothing,
    )


def evaluate_global(scenario: Scenario, arrays: ArrayRecord) -> tuple[float, float]:
    """Loss and accuracy of the global model (masked by the global ranking) on held-out data."""
    model = model_for(scenario)
    load_state(scenario, model, from_array_record(arrays))
    return evaluate(model, test_data(scenario))


def run_server(
    grid: Grid,
    scenario: Scenario,
    *,
    on_round: RoundCallback | None = None,
    resume_from: CheckpointState | None = None,
    wrap_strategy: StrategyWrapper | None = None,
) -> dict[str, Any]:
    """Run the whole federation described by ``scenario``; return its summary.

    With ``resume_from`` (see :func:`fedrank.server.resume.latest_checkpoint`) the run
    continues after that checkpoint's round; every round is checkpointed.
    ``wrap_strategy`` (simulations only) wraps the strategy, e.g. in an adversary
    that controls the malicious partitions' replies.
    """
    if scenario.strategy == "lora":
        from fedrank.server.lora import run_lora_server  # PEFT + transformers: LoRA runs only

        return run_lora_server(
            grid, scenario, on_round=on_round, resume_from=resume_from, wrap_strategy=wrap_strategy
        )
    started = time.perf_counter()
    results = ResultsWriter(scenario.results_dir, append=resume_from is not None)
    # Discovery starts every client's actor; a short round timeout (set to cut hung
    # clients off) must not make start-up fail on a loaded machine.
    partitions = discover_partitions(
        grid,
        expected=scenario.num_clients,
        timeout=max(scenario.round_timeout, DISCOVERY_TIMEOUT),
    )
    strategy = make_strategy(scenario, partitions, run_id=grid.run.run_id)
    if wrap_strategy is not None:
        strategy = wrap_strategy(strategy, partitions)
    strategy.summary()
    checkpoints = RunCheckpointer(scenario, strategy)
    arrays, start_round = checkpoints.start(
        lambda: to_array_record(initial_state(scenario)), results=results, resume_from=resume_from
    )
    final = run_rounds(
        grid,
        strategy,
        arrays=arrays,
        config=ConfigRecord(dict(scenario.to_run_config())),
        num_rounds=scenario.rounds,
        evaluate=lambda arrays: evaluate_global(scenario, arrays),
        results=results,
        timeout=scenario.round_timeout,
        start_round=start_round,
        on_round=on_round,
        after_round=checkpoints.save,
        partition_of={node: pid for pid, node in partitions.items()},
    )
    rows = results.read_rounds()
    state = from_array_record(final)
    if is_dense(scenario):
        results.write_arrays("model", state)
    else:
        results.write_arrays("rankings", state)
        results.write_arrays("mask", {n: top_k_mask(r, scenario.k) for n, r in state.items()})
    results.plot_accuracy(rows, title=f"{scenario.strategy} {scenario.model} on {scenario.dataset}")
    last = rows[-1]
    summary = {
        "scenario": scenario.to_run_config(),
        "final_accuracy": last["accuracy"],
        "final_loss": last["loss"],
        "best_accuracy": max(r["accuracy"] for r in rows),
        "rounds": scenario.rounds,
        "skipped_rounds": sum(1 for r in rows if r.get("skipped")),
        "rejected_replies": sum(int(r.get("rejected", 0)) for r in rows),
        "seconds": time.perf_counter() - started,
        "resumed_after_round": None if resume_from is None else resume_from.round,
        "model": {"architecture": scenario.model, "seed": scenario.seed, "k": scenario.k},
    }
    results.write_summary(summary)
    return summary


def make_server_app(
    scenario: Scenario,
    *,
    on_round: RoundCallback | None = None,
    resume_from: CheckpointState | None = None,
    wrap_strategy: StrategyWrapper | None = None,
) -> ServerApp:
    """A ServerApp bound to ``scenario`` (used by ``fedrank simulate``)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        with serve_status(scenario.status_address, total_rounds=scenario.rounds) as status:
            run_server(
                grid,
                scenario,
                on_round=status.chain(on_round),
                resume_from=resume_from,
                wrap_strategy=wrap_strategy,
            )

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: the scenario comes from the run config."""
    scenario = Scenario.from_mapping(dict(context.run_config), source="run config")
    if scenario.attack != "none":
        raise ConfigError("attack", "attacks are simulated by `fedrank simulate`, not `flwr run`")
    with serve_status(scenario.status_address, total_rounds=scenario.rounds) as status:
        summary = run_server(grid, scenario, on_round=status.chain(None))
    log.warning(
        "fedrank: final accuracy %.2f%% after %d rounds; results in %s",
        100 * summary["final_accuracy"],
        scenario.rounds,
        scenario.results_dir,
    )
