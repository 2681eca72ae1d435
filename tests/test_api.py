"""The Python API: a scenario built in code, a per-round tracker, the model loaded back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import fedrank
from fedrank.errors import ConfigError
from fedrank.tasks import load_task


@pytest.mark.parametrize("strategy", ["frl", "fedavg"])
def test_simulate_reports_each_round_and_load_model_reproduces_the_accuracy(
    tmp_path: Path, strategy: str
) -> None:
    scenario = fedrank.Scenario.of(
        strategy=strategy, dataset="digits", num_clients=4, clients_per_round=2, rounds=2,
        local_epochs=1, results_dir=str(tmp_path),
    )  # fmt: skip
    tracked: list[dict[str, Any]] = []  # stands for an experiment tracker's log call

    summary = fedrank.simulate(scenario, on_round=tracked.append, backend="local")

    assert [row["round"] for row in tracked] == [0, 1, 2]
    assert tracked[-1]["accuracy"] == summary["final_accuracy"]
    model = fedrank.load_model(tmp_path)
    assert isinstance(model, torch.nn.Module)
    assert not model.training
    test = load_task(scenario).dataset.test  # type: ignore[attr-defined]
    with torch.no_grad():
        predicted = model(torch.from_numpy(test.images)).argmax(1).numpy()
    assert (predicted == test.labels).mean() == summary["final_accuracy"]


def test_load_model_names_a_folder_without_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="results-dir"):
        fedrank.load_model(tmp_path)
