"""The operator path with real Flower processes, started by path from the venv, not activated.

An operator who runs ``.venv/bin/fedrank superlink`` without activating the venv
has no Flower command on ``PATH``; Flower's SuperLink starts
``flower-superexec`` by name and, before fedrank put its own environment first,
exited at start-up. Both tests run with every Flower command removed from
``PATH``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrank.deploy.processes import wait_until
from tests.integration.processes import (
    VENV_BIN,
    Processes,
    env_without_venv,
    free_ports,
    still_running,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def processes(tmp_path: Path):
    group = Processes(tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()


def test_superlink_started_by_path_keeps_its_superexec(processes: Processes, tmp_path: Path):
    api, health = free_ports(2)
    argv = [str(VENV_BIN / "fedrank"), "superlink", "--insecure-demo", "--port", str(api)]
    argv += ["--health-address", f"127.0.0.1:{health}"]
    env = env_without_venv(FLWR_HOME=str(tmp_path / "home"))
    link = processes.start("superlink", argv, env=env, cwd=tmp_path)

    def superexec_running() -> bool:
        assert link.poll() is None, processes.log("superlink")  # exited: the old failure
        running = [k for k, what in processes.descendants().items() if "flower-superexec" in what]
        return bool(still_running(running))

    wait_until(superexec_running, timeout=120, what="the SuperLink's flower-superexec")

    assert "flower-superexec" not in env["PATH"]
    assert "FileNotFoundError" not in processes.log("superlink")


def test_federation_up_with_an_app_it_cannot_read_starts_nothing(processes: Processes, tmp_path):
    # A successful `flwr run` against `federation up` is tests/integration/test_deployment.py.
    # Here the app folder does not exist: the run config is checked against the app
    # before any certificate, SuperLink or site is made, one line names the file.
    argv = [str(VENV_BIN / "fedrank"), "federation", "up", "--sites", "1"]
    argv += ["--dir", str(tmp_path / "fed"), "--timeout", "180"]
    argv += ["--run", str(tmp_path / "no-app-here"), "--run-timeout", "300"]

    up = processes.start("up", argv, env=env_without_venv(), cwd=tmp_path)
    code = up.wait(timeout=600)
    seen = processes.descendants()

    log = processes.log("up")
    assert code not in (0, None), log
    assert "fedrank: error: app: cannot read" in log
    assert "no-app-here" in log
    assert not any("flower-" in what for what in seen.values())
    assert not (tmp_path / "fed").exists()


def test_federation_up_with_a_run_that_fails_exits_1_and_stops_everything(
    processes: Processes, tmp_path: Path
):
    # The ServerApp starts and fails (no such dataset): `flwr run --stream` exits 0, and
    # federation up reads the run's status back (finished:failed); every process it
    # started is gone when it returns.
    root = Path(__file__).resolve().parents[2]
    argv = [str(VENV_BIN / "fedrank"), "federation", "up", "--sites", "1"]
    argv += ["--dir", str(tmp_path / "fed"), "--timeout", "180", "--run", str(root)]
    argv += ["--run-config", 'dataset="no-such-data" rounds=1', "--run-timeout", "300"]

    up = processes.start("up", argv, env=env_without_venv(), cwd=tmp_path)
    code = up.wait(timeout=600)
    seen = processes.descendants()

    log = processes.log("up")
    assert code == 1, log
    assert "ended finished:failed" in log
    assert "flwr run ended with status 1" in log
    assert any("flower-supernode" in what for what in seen.values())
    assert still_running(list(seen)) == []
