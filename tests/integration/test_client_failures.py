"""Clients that raise, hang past the round timeout, or lose their Ray worker (real Ray)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from faulty_client import Fault, faulty_client_app

from fedrank.config import Scenario
from fedrank.simulations.run import simulate
from fedrank.strategies.sampling import sample_partitions
from tests.integration.processes import is_descendant

pytestmark = pytest.mark.integration


def sampled(scenario: Scenario, server_round: int) -> list[int]:
    return sample_partitions(
        list(range(scenario.run.num_clients)),
        count=scenario.run.clients_per_round,
        seed=scenario.run.seed,
        server_round=server_round,
    )


def rows_of(results: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]


class FaultyRun:
    """One run with: a raising client (round 1), a hung client (round 2), two raising
    clients and too few replies (round 3), then a clean round (round 4)."""

    def __init__(self, strategy: str, results: Path) -> None:
        self.scenario = Scenario.of(
            strategy=strategy,  # type: ignore[arg-type]
            dataset="digits",
            num_clients=6,
            clients_per_round=3,
            rounds=4,
            min_replies=2,
            # The hung client costs round 2 this long; a first round took over 20 s on a
            # loaded CI machine (2.2 s idle), so the bound leaves room for both.
            round_timeout=60.0,
            seed=7,
            results_dir=str(results / "run"),  # beside the control folder, not around it
        )
        self.raised = sampled(self.scenario, 1)[0]
        self.hung = sampled(self.scenario, 2)[1]
        self.raised_twice = sampled(self.scenario, 3)[:2]
        faults: dict[tuple[int, int], Fault] = {(1, self.raised): "raise", (2, self.hung): "hang"}
        faults.update({(3, p): "raise" for p in self.raised_twice})
        self.control = results / "control"
        self.control.mkdir(parents=True)
        self.app = faulty_client_app(faults, self.control)

    def release(self, row: dict[str, Any]) -> None:
        # The round with the hung client is over: let it go (its reply comes too late).
        if row["round"] == 2:
            (self.control / f"release-2-{self.hung}").touch()


# FedAvg's run is in the slow suite (``make test-all``): the same faults reach every
# strategy through the same loop, and every strategy meets them in tests/faults.
@pytest.fixture(scope="module", params=["frl", pytest.param("fedavg", marks=pytest.mark.slow)])
def faulty_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FaultyRun, list[str]]:
    run = FaultyRun(request.param, tmp_path_factory.mktemp(f"faulty-{request.param}"))
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("fedrank").addHandler(handler)
    try:
        simulate(run.scenario, client_app=run.app, on_round=run.release)
    finally:
        logging.getLogger("fedrank").removeHandler(handler)
        (run.control / f"release-2-{run.hung}").touch()  # never leave a client waiting
    return run, messages


def test_failed_clients_are_excluded_counted_and_the_run_completes(
    faulty_run: tuple[FaultyRun, list[str]],
) -> None:
    run, _ = faulty_run
    rows = rows_of(Path(run.scenario.output.results_dir))
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    one, two, three, four = rows[1:]
    assert (one["replies"], one["rejected"], one["rejected.client_error"]) == (2, 1, 1)
    assert not one["skipped"]
    assert (two["replies"], two["rejected"], two["rejected.timeout"]) == (2, 1, 1)
    assert not two["skipped"]
    # Below min-replies: the round is skipped, the global state kept.
    assert (three["replies"], three["rejected"], three["rejected.client_error"]) == (1, 2, 2)
    assert three["skipped"]
    assert three["accuracy"] == two["accuracy"]
    # The next round samples again and goes on.
    assert (four["replies"], four["rejected"], four["skipped"]) == (3, 0, False)
    summary = json.loads((Path(run.scenario.output.results_dir) / "summary.json").read_text())
    assert summary["skipped_rounds"] == 1
    assert summary["rejected_replies"] == 4


def test_each_exclusion_and_the_skip_is_logged_with_its_reason(
    faulty_run: tuple[FaultyRun, list[str]],
) -> None:
    run, messages = faulty_run
    text = "\n".join(messages)
    assert f"round 1: partition {run.raised} " in text
    assert "excluded, client_error: " in text
    assert "injected failure" in text
    assert f"round 2: partition {run.hung} " in text
    assert f"excluded, timeout: no reply within {run.scenario.run.round_timeout:g} s" in text
    for partition in run.raised_twice:
        assert f"round 3: partition {partition} " in text
    assert "round 3 skipped: 1 of 3 sampled clients gave valid replies" in text


def ray_actor_pids() -> set[int]:
    # ray.util.state needs the dashboard, which Flower starts without; the GCS table
    # below is what `ray list actors` reads too.
    import ray._private.state

    table = ray._private.state.actors()
    return {
        int(a["Pid"])
        for a in table.values()
        if a["ActorClassName"] == "ClientAppActor" and a["State"] == "ALIVE"
    }


def test_a_ray_worker_killed_mid_round_is_excluded_and_the_run_completes(
    tmp_path: Path,
) -> None:
    # Arrange: in round 2 one client reports its worker's PID and waits to be killed.
    scenario = Scenario.of(
        dataset="digits",
        num_clients=4,
        clients_per_round=2,
        rounds=4,
        min_replies=1,
        round_timeout=60.0,
        seed=5,
        results_dir=str(tmp_path / "results"),
    )
    victim = sampled(scenario, 2)[0]
    control = tmp_path / "control"
    control.mkdir()
    app = faulty_client_app({(2, victim): "await_kill"}, control)
    seen: dict[str, Any] = {}
    restarted = threading.Event()

    def killer() -> None:
        marker = control / f"pid-2-{victim}"
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not marker.exists():
            seen["error"] = "the victim never reported its PID"
            restarted.set()
            return
        pid = int(marker.read_text())
        before = ray_actor_pids()
        seen.update(pid=pid, actor=pid in before, ours=is_descendant(pid, os.getpid()))
        if seen["actor"] and seen["ours"]:  # only a Ray actor worker this test started
            os.kill(pid, signal.SIGKILL)
            # Hold the server until Ray has restarted the actor, so that later
            # rounds do not meet it mid-restart.
            while time.monotonic() < deadline:
                alive = ray_actor_pids()
                if pid not in alive and len(alive) == len(before):
                    seen["restarted"] = True
                    break
                time.sleep(0.2)
        restarted.set()

    def on_round(row: dict[str, Any]) -> None:
        if row["round"] == 2:
            restarted.wait(timeout=150)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        # Act
        summary = simulate(scenario, client_app=app, on_round=on_round)
    finally:
        (control / "never").touch()
        thread.join(timeout=10)

    # Assert
    assert seen.get("actor"), seen
    assert seen.get("ours"), seen
    assert seen.get("restarted"), seen
    rows = rows_of(Path(scenario.output.results_dir))
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    killed_round = rows[2]
    assert killed_round["rejected.worker_died"] == 1
    assert killed_round["replies"] == 1
    assert not killed_round["skipped"]
    assert all(r["replies"] == 2 and r["rejected"] == 0 for r in rows[3:])
    assert summary["final_accuracy"] == rows[-1]["accuracy"]
