"""A run with a Flower server optimizer, stopped and resumed, is the uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedrank.config import Scenario
from fedrank.server.checkpoint import list_checkpoints, load_checkpoint
from fedrank.server.resume import latest_checkpoint, resume_scenario
from fedrank.simulations.inprocess import final_state, run_in_process
from fedrank.simulations.run import simulate
from fedrank.tasks import load_task

pytestmark = pytest.mark.integration


def scenario_in(folder: Path, aggregator: str) -> Scenario:
    return Scenario.of(
        strategy="fedavg", aggregator=aggregator, dataset="digits", model="mlp", num_clients=6,
        clients_per_round=3, rounds=4, local_epochs=1, seed=5, results_dir=str(folder),
    )  # fmt: skip


@pytest.mark.parametrize("aggregator", ["fedadam"])
def test_stopped_after_round_2_and_resumed_equals_the_uninterrupted_run(
    tmp_path: Path, aggregator: str
) -> None:
    whole = run_in_process(scenario_in(tmp_path / "whole", aggregator))
    cut = scenario_in(tmp_path / "cut", aggregator)
    run_in_process(cut, rounds=2)
    saved = load_checkpoint(list_checkpoints(tmp_path / "cut" / "checkpoints")[-1][1])
    assert saved.strategy_state["state"]  # the optimizer's state is in the checkpoint

    resumed = resume_scenario(tmp_path / "cut", {"rounds": 4})
    simulate(resumed, backend="local", resume_from=latest_checkpoint(tmp_path / "cut"))

    again = final_state(resumed)
    assert list(again) == list(whole)
    for name, value in whole.items():
        assert again[name].dtype == value.dtype
        np.testing.assert_array_equal(again[name], value)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").open()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("aggregator", "mode"), [("fedadam", "ffa"), ("fedprox", "fedit")])
def test_lora_adapters_train_under_a_flower_baseline(
    tmp_path: Path, aggregator: str, mode: str
) -> None:
    scenario = Scenario.of(
        strategy="lora", aggregator=aggregator, lora_aggregation=mode, model="tiny-bert",
        num_clients=2, clients_per_round=2, rounds=2, local_epochs=1, partitioner="iid",
        batch_size=16, lr=1e-2, max_length=16, train_records=64, test_records=64, seed=2,
        results_dir=str(tmp_path),
    )  # fmt: skip
    initial = load_task(scenario).initial_state()

    final = run_in_process(scenario)

    assert set(final) == set(initial)  # FFA: B and the head only, A never travels
    assert all(not name.endswith(".lora_A") for name in final) == (mode == "ffa")
    assert all(final[n].dtype == initial[n].dtype for n in final)
    moved = [n for n in final if not np.array_equal(final[n], initial[n])]
    assert any(n.endswith(".lora_B") for n in moved)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["replies"] for r in rows[1:]] == [2, 2]
