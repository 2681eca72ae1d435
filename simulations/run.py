"""Run a federation on Flower's simulation engine (Ray), or in this process.

Clients are Ray actors on this machine, or on an existing Ray cluster when
``RAY_ADDRESS`` is set (or ``ray_address`` is given). The ``local`` backend runs
the same ServerApp and ClientApp handlers in this process
(:class:`~fedrank.simulations.local_grid.InProcessGrid`). A scenario with an attack
gets its simulated adversary (:func:`~fedrank.simulations.attacks.adversary.attack_components`).
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fedrank.config import Scenario
from fedrank.devices import check_ray_placement, local_gpu_count
from fedrank.errors import ConfigError
from fedrank.privacy.site import SITE_ROOT_ENV, simulated_sites
from fedrank.server.loop import RoundCallback

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

    from fedrank.server.checkpoint import CheckpointState
    from fedrank.simulations.ray_engine import EngineNodes
    from fedrank.strategies.wrapping import StrategyWrapper

log = logging.getLogger(__name__)

Backend = Literal["ray", "local"]
BACKENDS: tuple[Backend, ...] = ("ray", "local")


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
            "num_cpus": scenario.run.num_cpus_per_client,
            "num_gpus": scenario.run.num_gpus_per_client,
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
    backend: Backend = "ray",
    wrap_strategy: StrategyWrapper | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` as a Flower simulation (on Ray, or ``local``); return its summary.

    ``resume_from`` continues a run after that checkpoint's round
    (:func:`fedrank.server.resume.latest_checkpoint`); ``client_app`` replaces
    fedrank's ClientApp (tests inject failing clients this way); ``wrap_strategy``
    wraps the server's strategy (a privacy audit's self-test; not with an attack).
    """
    from fedrank.server.app import make_server_app
    from fedrank.server.results import check_results_dir, claim_results_dir
    from fedrank.simulations.attacks.adversary import attack_components
    from fedrank.tasks import load_task

    if backend not in BACKENDS:
        raise ConfigError("backend", f"must be one of {list(BACKENDS)}, got {backend!r}")
    load_task(scenario).check()  # a run that cannot run fails here, before Ray starts
    engine: EngineNodes | None = None
    if backend == "ray":
        from fedrank.simulations.ray_engine import EngineNodes

        engine = EngineNodes()  # the server reads the engine's node map, asks few nodes
        local = not (ray_address or os.environ.get("RAY_ADDRESS"))
        check_ray_placement(
            scenario.run.device,
            num_gpus_per_client=scenario.run.num_gpus_per_client,
            local_gpus=local_gpu_count() if local else None,
        )
    attack_client_app, wrap = attack_components(scenario)
    if wrap_strategy is not None:
        if wrap is not None:
            raise ConfigError("attack", "a simulated attack and another strategy wrapper")
        wrap = wrap_strategy
    if resume_from is None:
        scenario = scenario.replace(results_dir=claim_results_dir(scenario.output.results_dir))
    else:
        check_results_dir(scenario.output.results_dir, resume_round=resume_from.round)
    client_app = client_app or attack_client_app
    server_app = make_server_app(
        scenario,
        on_round=on_round,
        resume_from=resume_from,
        wrap_strategy=wrap,
        engine_nodes=engine.wait if engine is not None else None,
    )
    # Each simulated site keeps its own DP ledger (its default policy: the scenario's
    # request) under <results>/sites.
    with simulated_sites(scenario.output.results_dir):
        _run(scenario, server_app, client_app, engine=engine, ray_address=ray_address)
    summary_path = Path(scenario.output.results_dir) / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(
            f"the simulation ended without writing {summary_path}; see the log above"
        )
    summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
    return summary


def _run(
    scenario: Scenario,
    server_app: Any,
    client_app: ClientApp,
    *,
    engine: EngineNodes | None,
    ray_address: str | None,
) -> None:
    """Run the apps on Flower's Ray engine (which fills ``engine``), or in this process
    without one."""
    if engine is None:
        from flwr.app import Context, RecordDict

        from fedrank.simulations.local_grid import InProcessGrid, server_identity

        grid = InProcessGrid(client_app, num_nodes=scenario.run.num_clients, seed=scenario.run.seed)
        context = Context(
            run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
        )
        with server_identity(grid.run):
            server_app(grid, context)
    else:
        from flwr.simulation import run_simulation

        from fedrank.simulations.ray_engine import fast_dispatch

        config = backend_config(scenario, ray_address=ray_address)
        if "address" in config["init_args"]:
            _connect_to_cluster(config["init_args"])
        with fast_dispatch(engine):  # Flower's dispatcher scans every node for every message
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=scenario.run.num_clients,
                backend_config=config,
            )


def _connect_to_cluster(init_args: dict[str, Any]) -> None:
    """Join a running Ray cluster with the environment its workers need.

    Workers of a running cluster do not inherit this process's environment: the module
    path (Flower's own ``ray.init`` passes only that, and takes no other runtime
    environment) and the simulated sites' ledger folder travel explicitly. Flower's Ray
    backend then finds Ray initialised and uses this connection (and shuts it down).
    """
    import sys

    import ray

    paths = [*sys.path, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {"PYTHONPATH": os.pathsep.join(paths)}
    if SITE_ROOT_ENV in os.environ:
        env[SITE_ROOT_ENV] = os.environ[SITE_ROOT_ENV]
    ray.init(runtime_env={"env_vars": env}, include_dashboard=False, **init_args)
