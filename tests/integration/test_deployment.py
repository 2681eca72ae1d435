"""A real Flower 1.41 deployment on loopback: TLS, SuperNode authentication, ``flwr run``.

One ``flower-superlink`` and three ``flower-supernode`` processes (command lines
from :mod:`fedrank.deploy.launch`, certificates and keys from
:mod:`fedrank.deploy.certs`) run a short FRL federation on sklearn digits
submitted with ``flwr run``. A fourth SuperNode, whose key was never
registered, claims partition 0: it must be refused (were it admitted, the
server's discovery would stop the run with "two nodes claim partition 0").
Site 2 trains on its own ``.npz`` (``data-path``). While the run goes on, the
ServerApp's status service and ``grpc.health.v1`` are polled.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedrank.config import Scenario
from fedrank.deploy.certs import write_site_files, write_superlink_files
from fedrank.deploy.launch import SuperLinkLaunch, SuperNodeLaunch, flower_executable
from fedrank.errors import FedrankError
from fedrank.protos.status_codec import RunStatus
from fedrank.server.status import fetch_status
from fedrank.tasks import load_task
from tests.integration.processes import (
    ROOT,
    Processes,
    base_env,
    free_ports,
    still_running,
    wait_for,
)

pytestmark = pytest.mark.integration

CONNECTION = "fedrank-loopback"
SITES = 3
ROUNDS = 2
DATA_SITE = 2  # this site trains on its own .npz (data-path)


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


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclasses.dataclass
class Deployment:
    results: Path
    run_returncode: int
    run_output: str
    statuses: list[tuple[RunStatus, str]]
    after_run: str
    intruder_returncode: int | None
    intruder_log: str


@pytest.fixture(scope="module")
def deployment(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    tmp = tmp_path_factory.mktemp("deployment")
    certs = tmp / "certs"
    api, link_health, status_port, *runtime = free_ports(3 + SITES + 1)
    status_address = f"127.0.0.1:{status_port}"
    scenario = _scenario(tmp / "results", status_address)

    # Arrange: credentials, the coordinator, the Flower CLI's connection.
    write_superlink_files(certs)
    sites = [certs / f"site-{i}" for i in range(SITES)]
    for i, site in enumerate(sites):
        write_site_files(site, site=f"site-{i}")
    write_site_files(certs / "intruder", site="intruder")
    own = load_task(scenario).partition_data(DATA_SITE)
    np.savez(tmp / "site-data.npz", images=own.images, labels=own.labels)

    link = SuperLinkLaunch.from_tls_dir(
        certs / "superlink", port=api, health_address=f"127.0.0.1:{link_health}"
    )
    processes.start("superlink", link.argv(), env=base_env(FLWR_HOME=str(tmp / "home-link")))
    wait_for(
        lambda: _serving(f"127.0.0.1:{link_health}") and _listening(api),
        timeout=120,
        what="the SuperLink (health SERVING, API port open)",
    )
    cli_home = tmp / "home-cli"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{api}"\nroot-certificates = "{certs / "ca.crt"}"\n'
    )
    cli_env = base_env(FLWR_HOME=str(cli_home))
    flwr = flower_executable("flwr")
    registering = [
        processes.start(
            f"register-{i}",
            [flwr, "supernode", "register", str(site / "auth.key.pub"), CONNECTION],
            env=cli_env,
        )
        for i, site in enumerate(sites)
    ]
    for i, proc in enumerate(registering):
        assert proc.wait(timeout=180) == 0, processes.log(f"register-{i}")

    # Act: three registered sites and one intruder, then the run.
    for i, site in enumerate(sites):
        node = SuperNodeLaunch.from_credentials(
            ca_cert=certs / "ca.crt",
            credentials=site,
            superlink=f"127.0.0.1:{api}",
            partition_id=i,
            data_path=str(tmp / "site-data.npz") if i == DATA_SITE else "",
            runtime_port=runtime[i],
        )
        processes.start(f"site-{i}", node.argv(), env=base_env(FLWR_HOME=str(tmp / f"home-{i}")))
    intruder = SuperNodeLaunch.from_credentials(
        ca_cert=certs / "ca.crt",
        credentials=certs / "intruder",
        superlink=f"127.0.0.1:{api}",
        partition_id=0,
        runtime_port=runtime[SITES],
    )
    intruder_proc = processes.start(
        "intruder", intruder.argv(), env=base_env(FLWR_HOME=str(tmp / "home-intruder"))
    )
    run = processes.start(
        "flwr-run",
        [flwr, "run", str(ROOT), CONNECTION, "--run-config", _run_config(scenario), "--stream"],
        env=cli_env,
        cwd=tmp,
    )
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
    return Deployment(
        results=tmp / "results",
        run_returncode=run.returncode,
        run_output=processes.log("flwr-run"),
        statuses=statuses,
        after_run=after_run,
        intruder_returncode=intruder_proc.returncode,
        intruder_log=processes.log("intruder"),
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


def test_stopping_leaves_no_started_process_behind(
    deployment: Deployment, processes: Processes
) -> None:
    seen = processes.descendants()

    processes.stop_all()

    assert any("flower-superexec" in what for what in seen.values())
    assert all(proc.poll() is not None for proc in processes.started.values())
    assert still_running(list(seen)) == []
