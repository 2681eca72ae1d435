"""The same federation as a plain loop in one process, without Flower or Ray.

The baseline of the federation-overhead benchmark and a quick way to tune a
scenario: same partitions, same seeded sampling, same local training, same vote.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fedrank.config import Scenario
from fedrank.strategies.ranking import vote_layers
from fedrank.strategies.sampling import sample_partitions
from fedrank.task import (
    initial_state,
    is_dense,
    load_state,
    local_update,
    model_for,
    test_data,
    threads_of_a_client,
)
from fedrank.training import evaluate


def run_in_process(
    scenario: Scenario,
    *,
    rounds: int | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Run the federation in this process; return the final global state."""
    state = initial_state(scenario)
    model = model_for(scenario)
    for server_round in range(1, (rounds or scenario.rounds) + 1):
        started = time.perf_counter()
        chosen = sample_partitions(
            list(range(scenario.num_clients)),
            count=scenario.clients_per_round,
            seed=scenario.seed,
            server_round=server_round,
        )
        with threads_of_a_client(scenario):
            updates = [local_update(scenario, state, server_round, p) for p in chosen]
            replies = [(u, r.num_examples) for u, r in updates]
        if is_dense(scenario):
            total = sum(n for _, n in replies)
            state = {k: np.sum([r[k] * (n / total) for r, n in replies], axis=0) for k in state}
        else:
            state = vote_layers([r for r, _ in replies])
        if on_round:
            load_state(scenario, model, state)
            loss, acc = evaluate(model, test_data(scenario))
            on_round(
                {
                    "round": server_round,
                    "accuracy": acc,
                    "loss": loss,
                    "seconds": time.perf_counter() - started,
                }
            )
    return state
