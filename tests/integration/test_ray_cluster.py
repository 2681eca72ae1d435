"""``fedrank simulate`` on a real two-node Ray cluster started on this machine.

``ray start --head`` and ``ray start --address=...`` (one CPU each, their own
temp dir, ``--block`` so that each stays the parent of the daemons it starts and
stops them on SIGTERM) make a two-node cluster; ``fedrank simulate`` runs against
it through ``RAY_ADDRESS``. Where the clients ran is read from Ray's own record
of task executions (the GCS task events, one per ``ClientAppActor.run`` call,
with the node it ran on). Teardown stops exactly the two ``ray start`` processes
and any daemon they left, by PID; ``ray stop`` (which stops every Ray process of
the user) is never called.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.processes import (
    VENV_BIN,
    Processes,
    base_env,
    free_ports,
    still_running,
    wait_for,
)

pytestmark = pytest.mark.integration

# Ray replaces a node address of exactly 127.0.0.1 by the machine's outward-facing
# address; another loopback address keeps the head (and all traffic) on lo.
HEAD_IP = "127.0.0.2"
CLIENTS = 4
ROUNDS = 2

# Run in a fresh interpreter (no Ray state left in the test process): node ids of
# the cluster, and the node of every ClientAppActor.run task execution. Ray's State
# API (ray.util.state.list_tasks) reads the same GCS table but needs the dashboard,
# which ray without [default] lacks; the GCS accessor below is what it wraps.
WHERE_CLIENTS_RAN = """
import json, sys, ray
from ray._private import state
from ray.core.generated import gcs_pb2
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
runs = {}
for raw in state.state._global_state_accessor.get_task_events():
    event = gcs_pb2.TaskEvents.FromString(raw)
    if event.task_info.name == "ClientAppActor.run" and event.state_updates.HasField("node_id"):
        runs.setdefault(event.state_updates.node_id.hex(), set()).add(event.task_id.hex())
ray.shutdown()
print(json.dumps({"nodes": nodes, "runs": {node: len(tasks) for node, tasks in runs.items()}}))
"""


def _started(processes: Processes, name: str) -> bool:
    proc = processes.started[name]
    if proc.poll() is not None:
        pytest.fail(f"{name} exited with {proc.returncode}:\n{processes.log(name)}")
    return "Ray runtime started" in processes.log(name)


@pytest.fixture(scope="module")
def ray_temp() -> Iterator[Path]:
    """Ray's session folder, short: its socket paths must fit in 107 bytes (AF_UNIX),
    which a deep pytest temp folder does not. Set up before ``processes``, so it is
    removed only after every Ray process has stopped."""
    folder = Path(tempfile.mkdtemp(prefix="fr-ray-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_run(
    ray_temp: Path, processes: Processes, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("ray-cluster")
    gcs, client_server, dashboard, head_agent, worker_agent = free_ports(5)
    env = base_env()
    ray = str(VENV_BIN / "ray")
    common = [
        "--num-cpus=1",
        "--num-gpus=0",
        # Random worker ports: the default range 10002-19999 may hold anyone's ports.
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--disable-usage-stats",
        "--block",
    ]
    processes.start(
        "ray-head",
        [
            ray,
            "start",
            "--head",
            f"--node-ip-address={HEAD_IP}",
            f"--port={gcs}",
            f"--temp-dir={ray_temp}",
            "--include-dashboard=false",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client_server}",
            f"--dashboard-agent-listen-port={head_agent}",
            *common,
        ],
        env=env,
    )
    wait_for(lambda: _started(processes, "ray-head"), timeout=180, what="the Ray head")
    address = f"127.0.0.1:{gcs}"
    processes.start(
        "ray-worker",
        [
            ray,
            "start",
            f"--address={address}",
            f"--dashboard-agent-listen-port={worker_agent}",
            *common,
        ],
        env=env,
    )
    wait_for(lambda: _started(processes, "ray-worker"), timeout=180, what="the Ray worker node")

    results = tmp / "results"
    simulate = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedrank.cli",
            "simulate",
            "--quiet",
            "--dataset=digits",
            f"--num-clients={CLIENTS}",
            f"--clients-per-round={CLIENTS}",
            f"--rounds={ROUNDS}",
            "--lr=1.0",
            "--partitioner=iid",
            "--seed=7",
            "--num-cpus-per-client=1",
            f"--results-dir={results}",
        ],
        env={**env, "RAY_ADDRESS": address},
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    where = subprocess.run(
        [sys.executable, "-c", WHERE_CLIENTS_RAN, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert where.returncode == 0, where.stderr
    return {
        "simulate": simulate,
        "results": results,
        "where": json.loads(where.stdout.strip().splitlines()[-1]),
    }


def test_simulation_on_the_cluster_learns(cluster_run: dict[str, object]) -> None:
    simulate = cluster_run["simulate"]
    assert isinstance(simulate, subprocess.CompletedProcess)
    assert simulate.returncode == 0, simulate.stdout + simulate.stderr
    results = cluster_run["results"]
    assert isinstance(results, Path)
    lines = (results / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]

    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    assert rows[-1]["accuracy"] > 0.6  # chance is 0.1
    assert all(r["replies"] == CLIENTS and r["rejected"] == 0 for r in rows[1:])


def test_clients_ran_on_both_nodes(cluster_run: dict[str, object]) -> None:
    where = cluster_run["where"]
    assert isinstance(where, dict)

    assert len(where["nodes"]) == 2
    assert sorted(where["runs"]) == where["nodes"]
    # Every client answered one discovery query and ROUNDS train messages.
    assert sum(where["runs"].values()) == CLIENTS * (1 + ROUNDS)


def test_stopping_the_cluster_leaves_no_ray_process_behind(
    cluster_run: dict[str, object], processes: Processes
) -> None:
    seen = processes.descendants()

    processes.stop_all()

    assert any("raylet" in what for what in seen.values())
    assert any("gcs_server" in what for what in seen.values())
    assert all(proc.poll() is not None for proc in processes.started.values())
    assert still_running(list(seen)) == []
