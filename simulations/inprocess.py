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
from fedrank.models.supermask import get_rankings, set_rankings
from fedrank.strategies.ranking import vote_layers
from fedrank.strategies.sampling import sample_partitions
from fedrank.task import (
    client_data,
    initial_state,
    is_dense,
    model_for,
    test_data,
    threads_of_a_client,
    training_generator,
)
from fedrank.training import evaluate, load_numpy_state, numpy_state, train_local


def local_update(
    scenario: Scenario, state: dict[str, np.ndarray], server_round: int, partition_id: int
) -> tuple[dict[str, np.ndarray], int]:
    """One client's reply in one round: new rank vectors (or weights) and its example count."""
    model = model_for(scenario)
    if is_dense(scenario):
        load_numpy_state(model, state)
    else:
        set_rankings(model, state)
    data = client_data(scenario, partition_id)
    train_local(
        model,
        data,
        epochs=scenario.local_epochs,
        lr=scenario.learning_rate,
        momentum=scenario.momentum,
        batch_size=scenario.batch_size,
        generator=training_generator(scenario, server_round, partition_id),
    )
    return (numpy_state(model) if is_dense(scenario) else get_rankings(model)), len(data)


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
            replies = [local_update(scenario, state, server_round, p) for p in chosen]
        if is_dense(scenario):
            total = sum(n for _, n in replies)
            state = {k: np.sum([r[k] * (n / total) for r, n in replies], axis=0) for k in state}
        else:
            state = vote_layers([r for r, _ in replies])
        if on_round:
            if is_dense(scenario):
                load_numpy_state(model, state)
            else:
                set_rankings(model, state)
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
