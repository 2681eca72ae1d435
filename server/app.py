"""The fedrank Flower ``ServerApp``.

``app`` reads the scenario from the Flower run config (``[tool.flwr.app.config]``,
overridable with ``flwr run . --run-config``); ``make_server_app`` builds the same
app around a scenario object, which ``fedrank simulate`` uses. Both run
:func:`fedrank.server.run.run_federation`.

Under ``flwr run`` the app logs one INFO line per round through Flower's logger, so
``flwr run --stream`` shows the run's progress (:func:`round_line`), and a run-config
``resume-from`` naming an earlier run's results folder continues that run after its
last checkpoint (:func:`deployed_scenario`).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from logging import INFO, WARNING
from typing import Any

from flwr.app import Context
from flwr.common.logger import LOGGER_NAME, log, set_logger_propagation
from flwr.serverapp import Grid, ServerApp

from fedrank.config import FIELDS, Scenario
from fedrank.deploy.run_config import deployable
from fedrank.errors import ConfigError, FedrankError
from fedrank.server.checkpoint import CheckpointState
from fedrank.server.loop import RoundCallback
from fedrank.server.run import run_federation
from fedrank.server.status import StatusBoard, serve_status
from fedrank.strategies.evaluation import FEDERATED_ACCURACY, FEDERATED_REPLIES
from fedrank.strategies.sampling import EngineMap
from fedrank.strategies.wrapping import StrategyWrapper

EPSILON_KEYS = (("dp-record-epsilon", "epsilon/record"), ("dp-epsilon", "epsilon/client"))
"""Row keys of the privacy spent so far, and how the round line names them."""


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
    engine_nodes: EngineMap | None = None,
) -> ServerApp:
    """A ServerApp bound to ``scenario`` (used by ``fedrank simulate``; ``engine_nodes``
    reads the node map of the simulation engine it runs beside)."""
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
                engine_nodes=engine_nodes,
            )

    return server_app


def round_line(row: dict[str, Any], *, total_rounds: int) -> str:
    """One line of a round's figures: accuracy, loss, federated accuracy, epsilon, rejected.

    >>> round_line({"round": 2, "accuracy": 0.9, "loss": 0.31, "rejected": 0,
    ...             "seconds": 1.5}, total_rounds=5)
    'fedrank: round 2/5: accuracy 90.00%, loss 0.3100, rejected 0 (1.5 s)'
    """
    parts = [f"accuracy {100 * row['accuracy']:.2f}%", f"loss {row['loss']:.4f}"]
    if FEDERATED_ACCURACY in row:
        parts.append(
            f"federated accuracy {100 * row[FEDERATED_ACCURACY]:.2f}% "
            f"({row[FEDERATED_REPLIES]} sites)"
        )
    parts += [f"{label} {row[key]:.3f}" for key, label in EPSILON_KEYS if key in row]
    if row["round"] > 0:
        parts.append(f"rejected {int(row.get('rejected', 0))}")
    skipped = " [skipped: too few valid replies]" if row.get("skipped") else ""
    return (
        f"fedrank: round {row['round']}/{total_rounds}: {', '.join(parts)}{skipped} "
        f"({row.get('seconds', 0.0):.1f} s)"
    )


def deployed_scenario(run_config: dict[str, Any]) -> tuple[Scenario, CheckpointState | None]:
    """The scenario a ``flwr run`` asks for, and the checkpoint it resumes from, if any.

    Without ``resume-from`` the run config is the scenario. With it, the scenario is the
    one of the run in that folder (its ``scenario.json``), which the run config must
    repeat: only :data:`~fedrank.server.resume.RESUMABLE_FIELDS` (rounds, round-timeout,
    resources, device, status) may change, and the results go to that folder.

    Raises
    ------
    ConfigError
        A bad run config; ``resume-from``: no run there, nothing to resume, or a setting
        that differs from the run's (each named with both values).
    """
    from fedrank.server.resume import RESUMABLE_FIELDS, latest_checkpoint, resume_scenario

    asked = deployable(Scenario.from_mapping(run_config, source="run config"))
    folder = asked.output.resume_from
    if not folder:
        from fedrank.server.results import claim_results_dir

        return asked.replace(results_dir=claim_results_dir(asked.output.results_dir)), None
    values = asked.to_run_config()
    try:
        resumed = resume_scenario(folder, {key: values[key] for key in RESUMABLE_FIELDS})
        checkpoint = latest_checkpoint(folder)
    except FedrankError as err:
        raise ConfigError("resume-from", str(err)) from err
    before = resumed.to_run_config()
    differ = [
        f"{key} (the run: {before[key]!r}, this run config: {values[key]!r})"
        for key in FIELDS
        if key not in RESUMABLE_FIELDS and key != "results-dir" and before[key] != values[key]
    ]
    if differ:
        raise ConfigError(
            "resume-from",
            f"{folder} holds a run with other settings; repeat them (only "
            f"{', '.join(sorted(RESUMABLE_FIELDS))} may change): " + "; ".join(differ),
        )
    return resumed, checkpoint


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: the scenario comes from the run config."""
    # Opacus configures the root logger when imported (logging.basicConfig), so every
    # line of Flower's logger would reach the stream twice; Flower's own handler prints
    # it once (Flower turns propagation off for the same reason in its simulation).
    set_logger_propagation(logging.getLogger(LOGGER_NAME), False)
    scenario, checkpoint = deployed_scenario(dict(context.run_config))
    eff, run = scenario.effective, scenario.run
    log(
        INFO,
        "fedrank: %s %s on %s, %d clients, %d per round, %d rounds; results in %s%s",
        eff.spec.name,
        eff.model,
        eff.dataset,
        run.num_clients,
        run.clients_per_round,
        run.rounds,
        scenario.output.results_dir,
        f" (resuming after round {checkpoint.round})" if checkpoint else "",
    )

    def progress(row: dict[str, Any]) -> None:
        log(INFO, "%s", round_line(row, total_rounds=run.rounds))

    with serve_output_status(scenario) as status:
        summary = run_federation(
            grid, scenario, on_round=status.chain(progress), resume_from=checkpoint
        )
    level = WARNING if summary.get("stopped") else INFO
    log(
        level,
        "fedrank: final accuracy %.2f%% after %d rounds on %s%s; results in %s",
        100 * summary["final_accuracy"],
        summary["rounds"],
        summary["device"],
        f" (stopped early: {summary['stopped']})" if summary.get("stopped") else "",
        scenario.output.results_dir,
    )
