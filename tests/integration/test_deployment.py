"""A real Flower 1.41 deployment on loopback: ``fedrank federation up``, then ``flwr run``.

The documented operator path, run as written: ``.venv/bin/fedrank federation up
--sites 2`` started by path with no Flower command on ``PATH`` (the venv not
activated) creates certificates and keys, starts one ``flower-superlink``,
registers two SuperNode keys and starts two ``flower-supernode`` processes
(TLS and SuperNode authentication on); site 1 trains on its own ``.npz``
(``data-path``). A third SuperNode, whose key was never registered, claims
partition 0: it must be refused (were it admitted, the server's discovery would
stop the run with "two nodes claim partition 0"), and ``fedrank federation
wait-registered`` must tell its key from a registered one. Then ``flwr run`` (the
command ``federation up`` prints) runs a short FRL federation on sklearn digits;
the ServerApp's status service and ``grpc.health.v1`` are polled meanwhile.
SIGTERM ends ``federation up``, which must leave no process behind.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from fedrank.config import Scenario
from fedrank.deploy.certs import write_site_files
from fedrank.deploy.launch import SuperNodeLaunch, flower_executable
from fedrank.errors import FedrankError
from fedrank.protos.status_codec import RunStatus
from fedrank.server.status import fetch_status
from fedrank.tasks import load_task
from tests.integration.processes import (
    ROOT,
    VENV_BIN,
    Processes,
    base_env,
    env_without_venv,
    free_ports,
    still_running,
    wait_for,
)

pytestmark = pytest.mark.integration

SITES = 2  # each message starts a ClientApp process a site: two fit two cores
ROUNDS = 2
DATA_SITE = 1  # this site trains on its own .npz (data-path)


def _scenario(results: Path, status_address: str) -> Scenario:
    return Scenario.of(
        dataset="digits",
        num_clients=SITES,
        clients_per_round=SITES,
        rounds=ROUNDS,
        lr=1.0,
        partitioner="iid",
        seed=5,
        results_dir=str(results),
        status_address=status_address,
    )


def _run_config(scenario: Scenario) -> str:
    """The scenario as ``flwr run --run-config`` pairs (keys of [tool.flwr.app.config])."""
    keys = ("dataset", "num-clients", "clients-per-round", "rounds", "lr", "partitioner")
    keys += ("seed", "results-dir", "status-address")
    values = scenario.to_run_config()
    return " ".join(f"{k}={json.dumps(values[k])}" for k in keys)


@dataclasses.dataclass
class Deployment:
    results: Path
    run_returncode: int
    run_output: str
    statuses: list[tuple[RunStatus, str]]
    after_run: str
    intruder_returncode: int | None
    intruder_log: str
    waited: dict[str, tuple[int, str]]
    federation_returncode: int
    federation_log: str
    seen: dict[tuple[int, float], str]
    daemons: dict[str, int]


def _wait_registered(
    processes: Processes, name: str, fed: dict[str, str], key: Path, timeout: float
) -> subprocess.Popen[bytes]:
    """Start ``fedrank federation wait-registered`` (a site's init container) for ``key``."""
    argv = [str(VENV_BIN / "fedrank"), "federation", "wait-registered"]
    argv += ["--superlink", fed["address"], "--ca", fed["ca_cert"], "--node-key", str(key)]
    argv += ["--timeout", str(timeout), "--interval", "0.5"]
    return processes.start(name, argv, env=env_without_venv())


@pytest.fixture(scope="module")
def deployment(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    tmp = tmp_path_factory.mktemp("deployment")
    fed_dir = tmp / "federation"
    status_port, intruder_port = free_ports(2)
    status_address = f"127.0.0.1:{status_port}"
    scenario = _scenario(tmp / "results", status_address)
    own = load_task(scenario).partition_data(DATA_SITE)
    np.savez(tmp / "site-data.npz", images=own.images, labels=own.labels)

    # Arrange: the federation, as an operator starts it (by path, venv not activated).
    up = [str(VENV_BIN / "fedrank"), "federation", "up", "--sites", str(SITES)]
    up += ["--dir", str(fed_dir), "--data-path", f"{DATA_SITE}={tmp / 'site-data.npz'}"]
    federation = processes.start(
        "federation", [*up, "--timeout", "180"], env=env_without_venv(), cwd=tmp
    )
    wait_for(
        lambda: (fed_dir / "federation.json").is_file() or federation.poll() is not None,
        timeout=400,
        what="fedrank federation up to bring every site online",
    )
    assert federation.poll() is None, processes.log("federation")
    fed = json.loads((fed_dir / "federation.json").read_text())

    # An intruder whose key nobody registered claims partition 0, while the init
    # container's check runs for a registered key and for the intruder's.
    write_site_files(tmp / "intruder", site="intruder")
    intruder = SuperNodeLaunch.from_credentials(
        ca_cert=Path(fed["ca_cert"]),
        credentials=tmp / "intruder",
        superlink=fed["address"],
        partition_id=0,
        runtime_port=intruder_port,
    )
    intruder_proc = processes.start(
        "intruder", intruder.argv(), env=base_env(FLWR_HOME=str(tmp / "home-intruder"))
    )
    waiting = {
        "wait-registered": _wait_registered(
            processes, "wait-registered", fed, fed_dir / "certs/sites/site-0/auth.key", 60
        ),
        "wait-intruder": _wait_registered(
            processes, "wait-intruder", fed, tmp / "intruder" / "auth.key", 2
        ),
    }
    waited = {name: (proc.wait(timeout=120), processes.log(name)) for name, proc in waiting.items()}

    # Act: the run, submitted as `federation up` told the operator.
    run = processes.start(
        "flwr-run",
        [flower_executable("flwr"), "run", str(ROOT), fed["connection"], "--stream",
         "--run-config", _run_config(scenario)],
        env=base_env(FLWR_HOME=fed["flwr_home"]),
        cwd=tmp,
    )  # fmt: skip
    statuses: list[tuple[RunStatus, str]] = []
    deadline = time.monotonic() + 400
    while run.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"flwr run did not finish in time:\n{processes.log('flwr-run')}")
        try:
            statuses.append(fetch_status(status_address, timeout=1.0))
        except FedrankError:
            time.sleep(0.3)
    try:
        fetch_status(status_address, timeout=1.0)
        after_run = "answered"
    except FedrankError as err:
        after_run = str(err)
    wait_for(lambda: intruder_proc.poll() is not None, timeout=60, what="the intruder to exit")

    # The operator's Ctrl-C (here SIGTERM): everything federation up started must end.
    seen = processes.descendants()
    federation.send_signal(signal.SIGTERM)
    federation.wait(timeout=120)
    return Deployment(
        results=tmp / "results",
        run_returncode=run.returncode,
        run_output=processes.log("flwr-run"),
        statuses=statuses,
        after_run=after_run,
        intruder_returncode=intruder_proc.returncode,
        intruder_log=processes.log("intruder"),
        waited=waited,
        federation_returncode=federation.returncode,
        federation_log=processes.log("federation"),
        seen=seen,
        daemons=fed["pids"],
    )


def test_frl_rounds_over_tls_with_authenticated_supernodes_learn(deployment: Deployment) -> None:
    assert deployment.run_returncode == 0, deployment.run_output
    lines = (deployment.results / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]

    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    assert rows[-1]["accuracy"] > 0.6  # chance is 0.1
    # Every site answered every round, the data-path site included.
    assert all(r["replies"] == SITES and r["rejected"] == 0 for r in rows[1:])
    assert all(r["bytes_up_per_client"] > 0 and r["bytes_down_per_client"] > 0 for r in rows[1:])
    summary = json.loads((deployment.results / "summary.json").read_text())
    assert summary["final_accuracy"] == rows[-1]["accuracy"]
    assert (deployment.results / "mask.safetensors").is_file()


def test_unregistered_supernode_is_refused_and_the_run_goes_on(deployment: Deployment) -> None:
    assert deployment.intruder_returncode not in (0, None)
    assert "Failed to activate SuperNode" in deployment.intruder_log
    assert deployment.run_returncode == 0
    assert "two nodes claim" not in deployment.run_output


def test_status_and_health_are_served_while_the_run_is_active(deployment: Deployment) -> None:
    statuses = [s for s, _ in deployment.statuses]
    health = {h for _, h in deployment.statuses}

    assert statuses, "the status service never answered during the run"
    assert {s.total_rounds for s in statuses} == {ROUNDS}
    assert "running" in {s.state for s in statuses}
    assert health <= {"SERVING", "NOT_SERVING"}
    assert "SERVING" in health
    rounds = [s.round for s in statuses]
    assert rounds == sorted(rounds)
    assert all(s.rejected_replies == 0 for s in statuses)
    assert "nothing answers" in deployment.after_run


def test_wait_registered_tells_a_registered_key_from_an_unknown_one(deployment: Deployment):
    (registered, registered_log) = deployment.waited["wait-registered"]
    (intruder, intruder_log) = deployment.waited["wait-intruder"]

    assert registered == 0, registered_log
    assert "fedrank: registered (online)" in registered_log
    assert intruder == 2, intruder_log
    assert "not registered" in intruder_log


def test_federation_up_stops_every_process_it_started(deployment: Deployment) -> None:
    federation_children = {k: v for k, v in deployment.seen.items() if v.startswith("federation")}

    assert deployment.federation_returncode == 0, deployment.federation_log
    assert "stopped on request (SIGTERM)" in deployment.federation_log
    assert set(deployment.daemons) == {"superlink", *(f"site-{i}" for i in range(SITES))}
    assert set(deployment.daemons.values()) <= {pid for pid, _ in federation_children}
    assert any("flower-superexec" in what for what in federation_children.values())
    assert still_running(list(federation_children)) == []
