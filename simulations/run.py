"""Run a federation on Flower's simulation engine (Ray).

Clients are Ray actors on this machine, or on an existing Ray cluster when
``RAY_ADDRESS`` is set (or ``ray_address`` is given).
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.server.loop import RoundCallback

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

    from fedrank.server.checkpoint import CheckpointState

log = logging.getLogger(__name__)


def scenario_path(name_or_path: str) -> Path:
    """A packaged scenario by name (``frl-mnist``) or a TOML file path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    packaged = resources.files("fedrank.simulations") / "scenarios" / f"{name_or_path}.toml"
    if not packaged.is_file():
        raise ConfigError(
            "scenario",
            f"no scenario named {name_or_path!r}; packaged: {', '.join(list_scenarios())}",
        )
    return Path(str(packaged))


def list_scenarios() -> list[str]:
    """Names of the packaged scenario files."""
    folder = resources.files("fedrank.simulations") / "scenarios"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def backend_config(scenario: Scenario, *, ray_address: str | None) -> dict[str, Any]:
    """Flower's Ray backend config: resources per client, cluster address."""
    init_args: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        init_args["address"] = address
    return {
        # Flower passes these straight to the actor's ``.options()``. Its pool puts an
        # actor whose process died back in service; without restarts every later
        # client given to it fails at once, so Ray restarts it (the client it was
        # running is lost and counted as worker_died; see fedrank.server.failures).
        "client_resources": {
            "num_cpus": scenario.num_cpus_per_client,
            "num_gpus": scenario.num_gpus_per_client,
            "max_restarts": -1,
        },
        "init_args": init_args,
    }


def simulate(
    scenario: Scenario,
    *,
    ray_address: str | None = None,
    on_round: RoundCallback | None = None,
    resume_from: CheckpointState | None = None,
    client_app: ClientApp | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` as a Ray-backed Flower simulation; return its summary.

    ``resume_from`` continues a run after that checkpoint's round
    (:func:`fedrank.server.resume.latest_checkpoint`); ``client_app`` replaces
    fedrank's ClientApp (tests inject failing clients this way).
    """
    from flwr.simulation import run_simulation

    from fedrank.client.app import app as fedrank_client_app
    from fedrank.server.app import make_server_app

    run_simulation(
        server_app=make_server_app(scenario, on_round=on_round, resume_from=resume_from),
        client_app=client_app or fedrank_client_app,
        num_supernodes=scenario.num_clients,
        backend_config=backend_config(scenario, ray_address=ray_address),
    )
    summary_path = Path(scenario.results_dir) / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(
            f"the simulation ended without writing {summary_path}; see the log above"
        )
    summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
    return summary
