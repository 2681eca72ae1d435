"""The same federation in this process: ServerApp, strategy and ClientApp handlers, no Ray.

:func:`run_in_process` runs a scenario on the ``local`` backend
(:class:`~fedrank.simulations.local_grid.InProcessGrid`): the very code a Ray
simulation runs (seeded sampling, the strategy and its aggregator, any simulated
adversary, the results folder), with the clients called one after the other. A
seed gives the same final state bit for bit as on Ray. It is the baseline of the
federation-overhead benchmark and a quick way to tune a scenario.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedrank.artifacts import FINAL_STATE, read_arrays
from fedrank.config import Scenario
from fedrank.server.loop import RoundCallback
from fedrank.simulations.run import simulate


def final_state(scenario: Scenario) -> dict[str, np.ndarray]:
    """The final global state a finished run left in its results folder."""
    return read_arrays(Path(scenario.output.results_dir) / FINAL_STATE)


def run_in_process(
    scenario: Scenario,
    *,
    rounds: int | None = None,
    on_round: RoundCallback | None = None,
) -> dict[str, np.ndarray]:
    """Run the federation in this process; return the final global state.

    Writes the scenario's results folder, as a Ray run does.
    """
    if rounds is not None:
        scenario = scenario.replace(rounds=rounds)
    simulate(scenario, backend="local", on_round=on_round)
    return final_state(scenario)
