"""fedrank in Python: build a scenario, run it, load the model it trained.

    >>> from fedrank import Scenario, simulate, load_model
    >>> scenario = Scenario.of(strategy="fedavg", rounds=5, results_dir="results/nb-1")
    >>> summary = simulate(scenario, on_round=lambda row: print(row["round"], row["accuracy"]))
    >>> model = load_model("results/nb-1")   # a torch module, ready for inference

``on_round`` receives each round's metrics row (the line written to ``metrics.jsonl``)
as soon as the round is done: hand it to the experiment tracker of your choice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedrank.artifacts import FINAL_STATE, read_arrays
from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.simulations.run import simulate

__all__ = ["Scenario", "load_model", "simulate"]


def load_model(results_dir: str | Path) -> Any:
    """The model a finished run trained, as a torch module in eval mode.

    FRL: the network rebuilt from the run's seed with the voted top-k mask; FedAvg: the
    averaged weights; LoRA: the base classifier with the global adapter (a PEFT model).

    Parameters
    ----------
    results_dir : str or Path
        The run's results folder (``scenario.json`` and ``state.safetensors``).

    Raises
    ------
    ConfigError
        ``results-dir`` when the folder does not hold a finished run.
    """
    from fedrank.tasks import load_task

    folder = Path(results_dir)
    try:
        values = json.loads((folder / "scenario.json").read_text(encoding="utf-8"))
        state = read_arrays(folder / FINAL_STATE)
    except (OSError, ValueError) as err:
        raise ConfigError("results-dir", f"{folder} holds no finished run: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError("results-dir", f"{folder / 'scenario.json'} does not hold a scenario")
    scenario = Scenario.from_mapping(values, source=str(folder / "scenario.json"))
    return load_task(scenario).load_model(state)
