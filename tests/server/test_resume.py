"""Checkpoint every round, resume from the last good one (no Ray: the parts one by one)."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedrank.config import Scenario
from fedrank.errors import CheckpointError, ConfigError
from fedrank.privacy.ledger import PrivacyLedger
from fedrank.protos.codecs import ArraysCodec
from fedrank.server.checkpoint import list_checkpoints, load_checkpoint
from fedrank.server.results import ResultsWriter
from fedrank.server.resume import (
    RunCheckpointer,
    capture_rng_state,
    checkpoint_folder,
    latest_checkpoint,
    ledgers_of,
    restore_rng_state,
    resume_scenario,
    write_scenario,
)
from fedrank.strategies.dp_client_level import ClientLevelDp
from fedrank.strategies.fedavg import SeededFedAvg

DELTA = 1e-5
CODEC = ArraysCodec.for_state({"fc1": np.zeros(3, dtype=np.int64)})


def scenario_in(folder: Path, **changes: Any) -> Scenario:
    return Scenario.of(
        dataset="digits", num_clients=4, clients_per_round=2, rounds=5, seed=3,
        results_dir=str(folder), **changes,
    )  # fmt: skip


def plain(scenario: Scenario) -> SeededFedAvg:
    """A strategy without state of its own (every draw seeded by seed and round)."""
    return SeededFedAvg(
        codec=CODEC,
        partitions={p: 100 + p for p in range(scenario.run.num_clients)},
        clients_per_round=scenario.run.clients_per_round,
        seed=scenario.run.seed,
    )


class CountingFedAvg(SeededFedAvg):
    """A strategy with state of its own (rounds aggregated), as a strategy may have."""

    aggregated = 0

    def state_dict(self) -> dict[str, Any]:
        return {"aggregated": self.aggregated}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.aggregated = int(state["aggregated"])


def ranking(values: Sequence[int]) -> ArrayRecord:
    return ArrayRecord({"fc1": Array(np.asarray(values, dtype=np.int64))})


def draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()  # noqa: NPY002


def test_rng_states_come_back_through_json(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    draws()  # move every generator off its seed state
    state = json.loads(json.dumps(capture_rng_state()))
    expected = draws()
    draws()

    restore_rng_state(state)

    assert draws() == expected


def test_the_scenario_file_gives_back_the_run_with_allowed_overrides(tmp_path: Path) -> None:
    scenario = scenario_in(tmp_path / "old-place", lr=0.5)
    write_scenario(tmp_path / "run", scenario)

    resumed = resume_scenario(tmp_path / "run", {"rounds": 9, "round_timeout": 5.0})

    assert resumed == scenario.replace(
        rounds=9, round_timeout=5.0, results_dir=str(tmp_path / "run")
    )
    with pytest.raises(ConfigError, match=r"resume: cannot change seed"):
        resume_scenario(tmp_path / "run", {"seed": 4})
    with pytest.raises(ConfigError, match=r"resume: no scenario.json"):
        resume_scenario(tmp_path / "elsewhere")


def test_a_fresh_start_removes_old_checkpoints_and_writes_the_scenario(tmp_path: Path) -> None:
    scenario = scenario_in(tmp_path)
    old = RunCheckpointer(scenario, plain(scenario))
    for r in (3, 4):
        old.save(r, ranking([0, 1, 2, 3]))

    checkpoints = RunCheckpointer(scenario, plain(scenario))
    arrays, start = checkpoints.start(
        lambda: ranking([3, 2, 1, 0]), results=ResultsWriter(tmp_path)
    )

    assert start == 1
    assert arrays["fc1"].numpy().tolist() == [3, 2, 1, 0]
    assert list_checkpoints(checkpoint_folder(tmp_path)) == []
    assert json.loads((tmp_path / "scenario.json").read_text()) == scenario.to_run_config()


def test_resume_restores_the_state_and_drops_rows_past_the_checkpoint(tmp_path: Path) -> None:
    # Arrange: rounds 0-3 done and checkpointed (keep 2: rounds 2 and 3 remain), a row
    # for round 4 written before a crash, then a torn line.
    scenario = scenario_in(tmp_path)
    results = ResultsWriter(tmp_path)
    strategy = CountingFedAvg(codec=CODEC, partitions={0: 1, 1: 2}, clients_per_round=2)
    checkpoints = RunCheckpointer(scenario, strategy)
    checkpoints.start(lambda: ranking([0, 1, 2, 3]), results=results)
    for r in range(4):
        strategy.aggregated = r
        results.write_round({"round": r, "accuracy": r / 10})
        checkpoints.save(r, ranking(np.roll([0, 1, 2, 3], r).tolist()))
    results.write_round({"round": 4, "accuracy": 0.4})
    with results.metrics_path.open("a") as f:
        f.write('{"round": 5, "accu')

    # Act: a new process would load the latest checkpoint and start from it.
    state = latest_checkpoint(tmp_path)
    fresh = CountingFedAvg(codec=CODEC, partitions={0: 7, 1: 8}, clients_per_round=2)
    arrays, start = RunCheckpointer(scenario, fresh).start(
        lambda: ranking([9, 9, 9, 9]),
        results=ResultsWriter(tmp_path, append=True),
        resume_from=state,
    )

    # Assert
    assert (state.round, start) == (3, 4)
    assert arrays["fc1"].numpy().tolist() == np.roll([0, 1, 2, 3], 3).tolist()
    assert fresh.aggregated == 3
    assert [row["round"] for row in ResultsWriter(tmp_path, append=True).read_rounds()] == [
        0,
        1,
        2,
        3,
    ]
    assert [r for r, _ in list_checkpoints(checkpoint_folder(tmp_path))] == [2, 3]


def test_a_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = scenario_in(tmp_path)
    checkpoints = RunCheckpointer(scenario, plain(scenario))
    for r in (1, 2):
        checkpoints.save(r, ranking([r, 0, 1, 2]))
    newest = list_checkpoints(checkpoint_folder(tmp_path))[-1][1]
    content = bytearray(newest.read_bytes())
    content[-50] ^= 0xFF
    newest.write_bytes(bytes(content))

    with caplog.at_level(logging.WARNING, logger="fedrank.server"):
        state = latest_checkpoint(tmp_path)

    assert state.round == 1
    assert state.arrays["fc1"].tolist() == [1, 0, 1, 2]
    assert "checksum mismatch" in caplog.text
    assert newest.name in caplog.text
    assert "the checkpoint of round 2 is unusable; resuming from round 1" in caplog.text


def test_no_checkpoint_nothing_to_resume(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothing to resume"):
        latest_checkpoint(tmp_path)


def test_resume_refuses_another_scenario_or_fewer_rounds(tmp_path: Path) -> None:
    scenario = scenario_in(tmp_path)
    RunCheckpointer(scenario, plain(scenario)).save(3, ranking([0, 1, 2, 3]))
    state = latest_checkpoint(tmp_path)
    other = scenario.replace(seed=4, k=0.25)
    with pytest.raises(
        CheckpointError, match=r"another scenario: k \(checkpoint 0.5, now 0.25\); seed"
    ):
        RunCheckpointer(other, plain(other)).start(
            lambda: ranking([0]), results=ResultsWriter(tmp_path, append=True), resume_from=state
        )
    short = scenario.replace(rounds=2)
    with pytest.raises(ConfigError, match="rounds: 2 is fewer than the 3 rounds already done"):
        RunCheckpointer(short, plain(short)).start(
            lambda: ranking([0]), results=ResultsWriter(tmp_path, append=True), resume_from=state
        )
    longer = scenario.replace(rounds=8, round_timeout=9.0)
    _, start = RunCheckpointer(longer, plain(longer)).start(
        lambda: ranking([0]), results=ResultsWriter(tmp_path, append=True), resume_from=state
    )
    assert start == 4


# ------------------------------------------------------------- privacy ledger


class FakeGrid:
    """The part of flwr's Grid that FedAvg.configure_train reads."""

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def dp_strategy(ledger: PrivacyLedger) -> ClientLevelDp:
    inner = FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1)
    return ClientLevelDp(
        inner,
        codec=ArraysCodec.for_state({"w": np.zeros(4, dtype=np.float32)}),
        ledger=ledger,
        clip_norm=1.0,
        noise_multiplier=1.2,
        expected_clients=2,
        seed=5,
    )


def dp_round(strategy: ClientLevelDp, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), FakeGrid()))  # type: ignore[arg-type]
    replies = []
    for i, message in enumerate(sorted(messages, key=lambda m: m.metadata.dst_node_id)):
        trained = {k: v.numpy() + 0.1 * (i + 1) for k, v in arrays.items()}
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        replies.append(Message(content, reply_to=message))
    new, _ = strategy.aggregate_train(server_round, replies)
    assert new is not None
    return new


def open_ledger(path: Path) -> PrivacyLedger:
    return PrivacyLedger(path, budget_epsilon=None, delta=DELTA, accountant="rdp")


@pytest.fixture
def crashed_dp_run(flower_identity: None, tmp_path: Path) -> tuple[Scenario, float, ArrayRecord]:
    """Rounds 1-3 released and in the ledger; checkpoints after rounds 1 and 2 only
    (the crash came after round 3's release, before its checkpoint)."""
    scenario = scenario_in(tmp_path, strategy="fedavg")
    ledger = open_ledger(tmp_path / "privacy-ledger.jsonl")
    strategy = dp_strategy(ledger)
    checkpoints = RunCheckpointer(scenario, strategy)
    arrays, _ = checkpoints.start(
        lambda: ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))}),
        results=ResultsWriter(tmp_path),
    )
    for r in (1, 2, 3):
        arrays = dp_round(strategy, r, arrays)
        if r < 3:
            checkpoints.save(r, arrays)
    return scenario, ledger.spent(unit="client", party="server"), arrays


def test_after_a_resume_epsilon_is_never_lower_than_before_the_crash(
    crashed_dp_run: tuple[Scenario, float, ArrayRecord], tmp_path: Path
) -> None:
    scenario, epsilon_before, arrays_before = crashed_dp_run
    # A crash mid-append leaves a torn last line; the ledger drops it.
    with (tmp_path / "privacy-ledger.jsonl").open("a") as f:
        f.write('{"round": 4, "mech')

    # Act: a new process reopens the ledger, resumes from round 2, replays round 3.
    with pytest.warns(RuntimeWarning, match="truncated last line"):
        ledger = open_ledger(tmp_path / "privacy-ledger.jsonl")
    strategy = dp_strategy(ledger)
    assert ledgers_of(strategy) == [ledger]
    state = latest_checkpoint(tmp_path)
    arrays, start = RunCheckpointer(scenario, strategy).start(
        lambda: ArrayRecord(), results=ResultsWriter(tmp_path, append=True), resume_from=state
    )
    epsilon_resumed = ledger.spent(unit="client", party="server")
    replayed = dp_round(strategy, start, arrays)
    epsilon_after_replay = ledger.spent(unit="client", party="server")

    # Assert: the interrupted round's release still counts; replaying it bit for bit
    # records nothing new.
    assert (state.round, start) == (2, 3)
    assert load_checkpoint(list_checkpoints(checkpoint_folder(tmp_path))[-1][1]).metadata[
        "ledgers"
    ] == [
        {
            "path": "privacy-ledger.jsonl",
            "releases": 2,
            "sha256": state.metadata["ledgers"][0]["sha256"],
        }
    ]
    assert epsilon_resumed >= epsilon_before
    assert epsilon_after_replay == epsilon_before
    assert [r.round for r in ledger.releases] == [1, 2, 3]
    np.testing.assert_array_equal(replayed["w"].numpy(), arrays_before["w"].numpy())


def test_a_ledger_that_lost_releases_refuses_the_resume(
    crashed_dp_run: tuple[Scenario, float, ArrayRecord], tmp_path: Path
) -> None:
    scenario, _, _ = crashed_dp_run
    path = tmp_path / "privacy-ledger.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    state = latest_checkpoint(tmp_path)

    path.write_text(lines[0])  # an old backup: one release instead of two
    with pytest.raises(CheckpointError, match="holds 1 releases, the checkpoint saw 2"):
        RunCheckpointer(scenario, dp_strategy(open_ledger(path))).start(
            lambda: ArrayRecord(), results=ResultsWriter(tmp_path, append=True), resume_from=state
        )
    path.write_text(lines[1] + lines[0] + lines[2])  # same count, other order
    with pytest.raises(CheckpointError, match="not those the checkpoint saw"):
        RunCheckpointer(scenario, dp_strategy(open_ledger(path))).start(
            lambda: ArrayRecord(), results=ResultsWriter(tmp_path, append=True), resume_from=state
        )
    with pytest.raises(CheckpointError, match="which this run does not use"):
        RunCheckpointer(scenario, plain(scenario)).start(
            lambda: ArrayRecord(), results=ResultsWriter(tmp_path, append=True), resume_from=state
        )
