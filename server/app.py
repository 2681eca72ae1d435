"""The fedrank Flower ``ServerApp``.

``app`` reads the scenario from the Flower run config (``[tool.flwr.app.config]``,
overridable with ``flwr run . --run-config``); ``make_server_app`` builds the same
app around a scenario object, which ``fedrank simulate`` uses. Both run
:func:`fedrank.server.run.run_federation`.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.server.checkpoint import CheckpointState
from fedrank.server.loop import RoundCallback
from fedrank.server.run import run_federation
from fedrank.server.status import StatusBoard, serve_status
from fedrank.strategies.wrapping import StrategyWrapper

log = logging.getLogger(__name__)


def serve_output_status(scenario: Scenario) -> AbstractContextManager[StatusBoard]:
    """The run's status service (``status-address``), lingering ``status-linger`` after it."""
    output = scenario.output
    return serve_status(
        output.status_address, total_rounds=scenario.run.rounds, linger=output.status_linger
    )


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
        with serve_status(
            scenario.output.status_address, total_rounds=scenario.run.rounds
        ) as status:
            run_federation(
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
    if scenario.attack.enabled:
        raise ConfigError("attack", "attacks are simulated by `fedrank simulate`, not `flwr run`")
    with serve_output_status(scenario) as status:
        summary = run_federation(grid, scenario, on_round=status.chain(None))
    log.warning(
        "fedrank: final accuracy %.2f%% after %d rounds; results in %s",
        100 * summary["final_accuracy"],
        summary["rounds"],
        scenario.output.results_dir,
    )
