"""SIGKILL a whole ``fedrank simulate`` mid-run (FRL, DP-LoRA), resume it, get the
uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from fedrank.artifacts import FINAL_STATE, read_arrays
from fedrank.config import Scenario
from fedrank.privacy.report import LEDGER_FILES, privacy_summary
from fedrank.server.checkpoint import list_checkpoints
from fedrank.simulations.inprocess import run_in_process
from fedrank.simulations.run import simulate
from fedrank.tasks.text_lora import ADAPTER_DIR
from tests.integration.processes import kill_session, session_members

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCENARIO = Scenario.of(
    dataset="digits",
    model="mlp",
    num_clients=6,
    clients_per_round=3,
    rounds=6,
    local_epochs=2,
    lr=1.0,
    seed=11,
)
FLAGS = [
    "--dataset", "digits", "--model", "mlp", "--num-clients", "6", "--clients-per-round", "3",
    "--rounds", "6", "--local-epochs", "2", "--lr", "1.0", "--seed", "11", "--quiet",
]  # fmt: skip

Launch = Callable[[Sequence[str], IO[bytes]], "subprocess.Popen[bytes]"]


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Start ``fedrank simulate`` in a session of its own; kill the whole session after."""
    started: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(args: Sequence[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedrank.cli", "simulate", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: Ray's processes join it
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        kill_session(process.pid)


def wait_for_checkpoint(
    folder: Path, process: subprocess.Popen[bytes], *, at_least: int, limit: float = 300
) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done = [r for r, _ in list_checkpoints(folder)]
        if done and max(done) >= at_least:
            return max(done)
        if process.poll() is not None:
            raise AssertionError(f"the run exited ({process.returncode}) before round {at_least}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of round {at_least} within {limit} s")


def rows_of(results: Path) -> list[dict[str, Any]]:
    rows = []
    for line in (results / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a row the kill cut short; the resume drops it
            continue
    return rows


def command_lines(pids: Sequence[int]) -> list[str]:
    lines = []
    for pid in pids:
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return lines


def test_sigkill_then_resume_from_a_damaged_checkpoint_equals_an_uninterrupted_run(
    launch: Launch, tmp_path: Path
) -> None:
    # Arrange: the run is killed once round 2 is checkpointed. On the local backend (a
    # Ray start costs ~30 s of CPU here): the DP-LoRA test below kills Ray with its run.
    results = tmp_path / "run"
    with (tmp_path / "first.log").open("wb") as log:
        first = launch([*FLAGS, "--backend", "local", "--results-dir", str(results)], log)
        wait_for_checkpoint(results / "checkpoints", first, at_least=2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    kill_session(first.pid)
    assert session_members(first.pid) == []
    assert not (results / "summary.json").exists(), "killed too late: the run had finished"
    # The newest checkpoint is damaged too: the resume must detect it, use the previous.
    newest_round, newest = list_checkpoints(results / "checkpoints")[-1]
    content = bytearray(newest.read_bytes())
    content[-64] ^= 0x01
    newest.write_bytes(bytes(content))
    before = rows_of(results)

    # Act
    with (tmp_path / "second.log").open("wb") as log:
        second = launch(["--resume", str(results), "--backend", "local", "--quiet"], log)
        status = second.wait(timeout=400)
    output = (tmp_path / "second.log").read_text(errors="replace")
    reference_rows: list[dict[str, Any]] = []
    reference = run_in_process(
        SCENARIO.replace(results_dir=str(tmp_path / "reference")), on_round=reference_rows.append
    )

    # Assert
    assert status == 0, output
    assert f"{newest.name}: checksum mismatch" in output
    assert f"resuming {results} after round {newest_round - 1}" in output
    rankings = read_arrays(results / FINAL_STATE)
    assert sorted(rankings) == sorted(reference)
    for name, expected in reference.items():
        np.testing.assert_array_equal(rankings[name], expected)
    rows = rows_of(results)
    assert [r["round"] for r in rows] == list(range(SCENARIO.run.rounds + 1))
    # Rounds up to the checkpoint used are the killed run's own rows (not redone).
    assert rows[:newest_round] == before[:newest_round]
    assert [r["round"] for r in reference_rows] == list(range(SCENARIO.run.rounds + 1))
    assert [r["accuracy"] for r in rows] == [r["accuracy"] for r in reference_rows]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["resumed_after_round"] == newest_round - 1
    assert summary["final_accuracy"] == reference_rows[-1]["accuracy"]


# Both DP levels: the server's client-level ledger, and each site's DP-SGD (accounted
# from the site's own ledger, which outlives the killed simulation). Poisson client
# sampling (3 of 4 expected): its sum must not depend on the simulation's node ids.
# Bit-identical only with replayable noise (dp-reproducible-noise, simulations only);
# with secure noise a resumed run is another valid run (the test after this one).
LORA_SCENARIO = Scenario.of(
    strategy="lora",
    dataset="rotten-tomatoes",
    model="tiny-bert",
    num_clients=4,
    clients_per_round=3,
    rounds=4,
    local_epochs=1,
    partitioner="iid",
    batch_size=8,
    physical_batch_size=8,
    lr=0.01,
    max_length=16,
    train_records=48,
    test_records=32,
    seed=5,
    dp="both",
    dp_noise_multiplier=1.0,
    dp_clip_norm=1.0,
    dp_client_noise_multiplier=1.0,
    dp_client_clip_norm=10.0,
    dp_reproducible_noise=True,
)
LORA_FLAGS = [
    "--strategy", "lora", "--dataset", "rotten-tomatoes", "--model", "tiny-bert",
    "--num-clients", "4", "--clients-per-round", "3", "--rounds", "4", "--local-epochs", "1",
    "--partitioner", "iid", "--batch-size", "8", "--physical-batch-size", "8", "--lr", "0.01",
    "--max-length", "16", "--train-records", "48", "--test-records", "32", "--seed", "5",
    "--dp", "both", "--dp-noise-multiplier", "1.0", "--dp-clip-norm", "1.0",
    "--dp-client-noise-multiplier", "1.0", "--dp-client-clip-norm", "10.0",
    "--dp-reproducible-noise", "true", "--quiet",
]  # fmt: skip
DP_METRICS = ("accuracy", "loss", "dp-epsilon", "dp-record-epsilon", "dp-record-mismatch")


def epsilons(results: Path) -> dict[str, tuple[float, int]]:
    """Largest epsilon and release count per privacy unit, read from the ledger files."""
    summary = privacy_summary(results)
    return {
        unit: (float(summary[unit]["max_epsilon"]), int(summary[unit]["releases"]))
        for unit in LEDGER_FILES
    }


def test_sigkill_then_resume_of_a_reproducible_dp_lora_run_equals_an_uninterrupted_run(
    launch: Launch, tmp_path: Path
) -> None:
    # Arrange: a DP-LoRA run is killed (with all of Ray) after round 2.
    results, reference = tmp_path / "run", tmp_path / "reference"
    with (tmp_path / "first.log").open("wb") as log:
        first = launch([*LORA_FLAGS, "--results-dir", str(results)], log)
        wait_for_checkpoint(results / "checkpoints", first, at_least=2)
        members = command_lines(session_members(first.pid))
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    kill_session(first.pid)
    assert session_members(first.pid) == []
    assert any("raylet" in line for line in members), "Ray was not in the session"
    assert not (results / "summary.json").exists(), "killed too late: the run had finished"
    killed_at = max(r for r, _ in list_checkpoints(results / "checkpoints"))
    before = epsilons(results)
    # The flags are LORA_SCENARIO's (what the uninterrupted reference below runs).
    written = json.loads((results / "scenario.json").read_text())
    assert written == LORA_SCENARIO.replace(results_dir=str(results)).to_run_config()

    # Act
    with (tmp_path / "second.log").open("wb") as log:
        second = launch(["--resume", str(results), "--quiet"], log)
        status = second.wait(timeout=400)
    output = (tmp_path / "second.log").read_text(errors="replace")
    # The same run, uninterrupted, in this process on the local backend: the resumed Ray
    # run must equal it bit for bit (a run's result does not depend on the backend).
    simulate(LORA_SCENARIO.replace(results_dir=str(reference)), backend="local")

    # Assert
    assert status == 0, output
    assert f"resuming {results} after round {killed_at}" in output
    resumed = read_arrays(results / FINAL_STATE)
    expected = read_arrays(reference / FINAL_STATE)
    assert (results / ADAPTER_DIR / "README.md").is_file()
    assert sorted(resumed) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(resumed[name], value)
    after = epsilons(results)
    for unit, (epsilon, releases) in before.items():
        assert releases >= killed_at
        assert after[unit][0] >= epsilon
    assert after == epsilons(reference)
    # Same releases, same noise: the round the kill interrupted is counted once.
    for ledger in LEDGER_FILES.values():
        assert (results / ledger).read_text() == (reference / ledger).read_text()
    # Every client's reported epsilon agrees with the ledger's (mismatch 0) after the
    # resume too: no client restarted its accountant from zero.
    rows, reference_rows = rows_of(results), rows_of(reference)
    assert [[r.get(k) for k in DP_METRICS] for r in rows] == [
        [r.get(k) for k in DP_METRICS] for r in reference_rows
    ]
    assert all(r["dp-record-mismatch"] == 0 for r in rows[1:])
    summary = json.loads((results / "summary.json").read_text())
    assert summary["resumed_after_round"] == killed_at


def test_sigkill_then_resume_of_a_secure_dp_lora_run_never_lowers_epsilon(
    launch: Launch, tmp_path: Path
) -> None:
    # Arrange: the same run with secure noise, killed after round 2. On the local
    # backend: killing Ray with the run is the test above; a Ray start costs ~30 s of CPU.
    results = tmp_path / "run"
    flags = [f for f in LORA_FLAGS if f not in ("--dp-reproducible-noise", "true")]
    flags += ["--backend", "local"]
    with (tmp_path / "first.log").open("wb") as log:
        first = launch([*flags, "--results-dir", str(results)], log)
        wait_for_checkpoint(results / "checkpoints", first, at_least=2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    kill_session(first.pid)
    assert not (results / "summary.json").exists(), "killed too late: the run had finished"
    before = epsilons(results)
    sites_before = {p: p.read_bytes() for p in (results / "sites").rglob("*.jsonl")}
    key = (results / "private" / "coordinator-randomness.json").read_text()

    # Act
    with (tmp_path / "second.log").open("wb") as log:
        second = launch(["--resume", str(results), "--backend", "local", "--quiet"], log)
        status = second.wait(timeout=400)
    output = (tmp_path / "second.log").read_text(errors="replace")

    # Assert: it finished; no epsilon went down, no release was lost; the coordinator's
    # key was read back, never written anywhere public; the sites' books only grew.
    assert status == 0, output
    after = epsilons(results)
    for unit, (epsilon, releases) in before.items():
        assert after[unit][0] >= epsilon
        assert after[unit][1] >= releases
    assert (results / "private" / "coordinator-randomness.json").read_text() == key
    secret = json.loads(key)["key"]
    for public in ("scenario.json", "summary.json", "privacy.json", "metrics.jsonl"):
        assert secret not in (results / public).read_text()
    for path, content in sites_before.items():
        assert path.read_bytes().startswith(content)
    summary = json.loads((results / "summary.json").read_text())
    assert summary["privacy"]["noise"] == "secure"
    assert summary["privacy"]["note"] is None
