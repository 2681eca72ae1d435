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
from fedrank.server.loop import RoundCallback, run_rounds
from fedrank.server.results import ResultsWriter
from fedrank.strategies.fedavg import SeededFedAvg
from fedrank.strategies.frl import FrlVote
from fedrank.strategies.ranking import top_k_mask
from fedrank.strategies.records import from_array_record, to_array_record
from fedrank.strategies.sampling import discover_partitions
from fedrank.task import initial_state, is_dense, layer_sizes, load_state, model_for, test_data
from fedrank.training import evaluate

log = logging.getLogger(__name__)


def make_strategy(scenario: Scenario, partitions: dict[int, int]) -> Strategy:
    """The scenario's strategy over the discovered partitions."""
    if scenario.strategy == "fedavg":
        return SeededFedAvg(
            partitions=partitions, clients_per_round=scenario.clients_per_round, seed=scenario.seed
        )
    return FrlVote(
        partitions=partitions,
        clients_per_round=scenario.clients_per_round,
        layer_sizes=layer_sizes(scenario),
        min_replies=scenario.min_replies,
        seed=scenario.seed,
    )


def evaluate_global(scenario: Scenario, arrays: ArrayRecord) -> tuple[float, float]:
    """Loss and accuracy of the global model (masked by the global ranking) on held-out data."""
    model = model_for(scenario)
    load_state(scenario, model, from_array_record(arrays))
    return evaluate(model, test_data(scenario))


def run_server(
    grid: Grid, scenario: Scenario, *, on_round: RoundCallback | None = None
) -> dict[str, Any]:
    """Run the whole federation described by ``scenario``; return its summary."""
    if scenario.strategy == "lora":
        from fedrank.server.lora import run_lora_server  # PEFT + transformers: LoRA runs only

        return run_lora_server(grid, scenario, on_round=on_round)
    started = time.perf_counter()
    results = ResultsWriter(scenario.results_dir)
    partitions = discover_partitions(
        grid, expected=scenario.num_clients, timeout=scenario.round_timeout
    )
    strategy = make_strategy(scenario, partitions)
    strategy.summary()
    final = run_rounds(
        grid,
        strategy,
        arrays=to_array_record(initial_state(scenario)),
        config=ConfigRecord(dict(scenario.to_run_config())),
        num_rounds=scenario.rounds,
        evaluate=lambda arrays: evaluate_global(scenario, arrays),
        results=results,
        timeout=scenario.round_timeout,
        on_round=on_round,
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
        "model": {"architecture": scenario.model, "seed": scenario.seed, "k": scenario.k},
    }
    results.write_summary(summary)
    return summary


def make_server_app(scenario: Scenario, *, on_round: RoundCallback | None = None) -> ServerApp:
    """A ServerApp bound to ``scenario`` (used by ``fedrank simulate``)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, scenario, on_round=on_round)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: the scenario comes from the run config."""
    scenario = Scenario.from_mapping(dict(context.run_config), source="run config")
    summary = run_server(grid, scenario)
    log.warning(
        "fedrank: final accuracy %.2f%% after %d rounds; results in %s",
        100 * summary["final_accuracy"],
        scenario.rounds,
        scenario.results_dir,
    )
