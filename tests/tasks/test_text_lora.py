"""The text LoRA task: one round of training, accounted from the history in the node's state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrank.artifacts import FINAL_STATE, read_arrays
from fedrank.config import Scenario
from fedrank.models.lora import _pristine_model
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.plan import planned_steps, sample_noise_multiplier, steps_per_epoch
from fedrank.privacy.site import read_history, write_history
from fedrank.protos.codecs import Reply
from fedrank.simulations.attacks.collusion import malicious_partitions
from fedrank.simulations.attacks.poisoning import poisoned
from fedrank.simulations.run import simulate
from fedrank.tasks import load_task
from fedrank.tasks.text_lora import TextLoraTask
from tests.models.tiny_bases import save_tiny_gpt2

SCENARIO = Scenario.of(
    strategy="lora",
    dataset="rotten-tomatoes",
    model="tiny-bert",
    num_clients=2,
    clients_per_round=2,
    rounds=3,
    local_epochs=1,
    partitioner="iid",
    batch_size=8,
    lr=1e-2,
    max_length=16,
    train_records=64,
    test_records=32,
    physical_batch_size=8,
    dp="sample",
    dp_target_epsilon=8.0,
)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def task(scenario: Scenario = SCENARIO) -> TextLoraTask:
    found = load_task(scenario)
    assert isinstance(found, TextLoraTask)
    return found


def lora_train(
    tensors: dict[str, np.ndarray],
    node_state: RecordDict,
    scenario: Scenario,
    server_round: int,
    partition_id: int,
    *,
    message: RecordDict | None = None,
    poison: bool = False,
) -> Reply:
    t = task(scenario)
    data = t.partition_data(partition_id)
    if poison:
        data = poisoned(scenario, t, partition_id, data)
    return t.train(
        tensors,
        data,
        server_round=server_round,
        partition_id=partition_id,
        message=message or RecordDict(),
        node_state=node_state,
    )


def load_history(state: RecordDict) -> tuple[tuple[float, float, int], ...]:
    return read_history(state)


def test_the_accountant_outlives_the_round_in_the_nodes_state() -> None:
    state = RecordDict()
    tensors = task().initial_state()
    n = len(task().partition_data(1))
    sigma = sample_noise_multiplier(SCENARIO, n)
    q = 1 / steps_per_epoch(num_examples=n, batch_size=8)

    loads_before = _pristine_model.cache_info().misses
    reports = []
    for server_round in (1, 2):
        reply = lora_train(tensors, state, SCENARIO, server_round, 1)
        assert reply.privacy is not None
        reports.append(reply.privacy)
        tensors = reply.state

    per_round = steps_per_epoch(num_examples=n, batch_size=8)
    assert [r.steps for r in reports] == [per_round, per_round]
    assert reports[1].epsilon_spent == compute_epsilon(
        history=[(sigma, q, 2 * per_round)], delta=1e-5, accountant="rdp"
    )
    assert reports[1].epsilon_spent > reports[0].epsilon_spent
    assert load_history(state) == ((sigma, q, 2 * per_round),)
    # The base model, loaded for the initial adapter, was not loaded again for a round.
    assert _pristine_model.cache_info().misses == loads_before


def test_the_noise_for_a_target_keeps_it_over_every_planned_round() -> None:
    n = len(task().partition_data(0))
    sigma = sample_noise_multiplier(SCENARIO, n)
    q = 1 / steps_per_epoch(num_examples=n, batch_size=8)

    spent = compute_epsilon(
        history=[(sigma, q, planned_steps(SCENARIO, n))], delta=1e-5, accountant="rdp"
    )

    assert 7.9 <= spent <= 8.0


def test_a_node_handed_the_history_accounts_from_it_not_from_zero() -> None:
    # Arrange: round 1 on a node that keeps its state; a fresh node gets that history
    # written into its state, as the ClientApp does from the site's ledger.
    reproducible = SCENARIO.replace(dp_reproducible_noise=True)
    kept = RecordDict()
    tensors = lora_train(task(reproducible).initial_state(), kept, reproducible, 1, 1).state
    lost = RecordDict()
    write_history(lost, load_history(kept))

    # Act
    same = lora_train(tensors, kept, reproducible, 2, 1)
    resumed = lora_train(tensors, lost, reproducible, 2, 1)

    # Assert: the same epsilon and history, and (reproducible noise) the same adapter.
    assert same.privacy is not None
    assert resumed.privacy is not None
    assert resumed.privacy.epsilon_spent == same.privacy.epsilon_spent
    assert load_history(lost) == load_history(kept)
    for name, value in same.state.items():
        np.testing.assert_array_equal(resumed.state[name], value)


def test_secure_noise_is_fresh_every_time_reproducible_noise_replays() -> None:
    tensors = task().initial_state()

    def twice(scenario: Scenario) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        first = lora_train(tensors, RecordDict(), scenario, 1, 0).state
        return first, lora_train(tensors, RecordDict(), scenario, 1, 0).state

    secure = twice(SCENARIO)
    replayed = twice(SCENARIO.replace(dp_reproducible_noise=True))

    assert any(not np.array_equal(secure[0][n], secure[1][n]) for n in secure[0])
    for name, value in replayed[0].items():
        np.testing.assert_array_equal(replayed[1][name], value)


def test_a_dp_reply_carries_no_example_count_and_no_loss() -> None:
    for scenario in (
        SCENARIO,
        SCENARIO.replace(dp="client", dp_target_epsilon=0.0, dp_client_noise_multiplier=1.0),
    ):
        reply = lora_train(task(scenario).initial_state(), RecordDict(), scenario, 1, 0)

        assert reply.num_examples is None
        assert set(reply.metrics) <= {"dp-epsilon"}
    plain = SCENARIO.replace(dp="none", dp_target_epsilon=0.0)
    reply = lora_train(task(plain).initial_state(), RecordDict(), plain, 1, 0)
    assert reply.num_examples == len(task(plain).partition_data(0))


def test_a_label_flipping_lora_client_trains_on_its_records_with_labels_reversed() -> None:
    scenario = SCENARIO.replace(
        dp="none", dp_target_epsilon=0.0, attack="label_flip", malicious_fraction=0.5
    )
    (malicious,) = malicious_partitions(scenario)
    benign = 1 - malicious
    own = task(scenario).partition_data(malicious)

    flipped = poisoned(scenario, task(scenario), malicious, own)

    assert torch.equal(flipped.labels, 1 - own.labels)
    assert torch.equal(flipped.input_ids, own.input_ids)
    assert poisoned(scenario, task(scenario), benign, own) is own
    honest = scenario.replace(attack="none", malicious_fraction=0.0)

    def trained(s: Scenario, pid: int) -> dict[str, np.ndarray]:
        # As the poisoning ClientApp trains: on its hook's examples.
        return lora_train(task(s).initial_state(), RecordDict(), s, 1, pid, poison=True).state

    poisoned_state, clean = trained(scenario, malicious), trained(honest, malicious)
    assert any(not np.array_equal(poisoned_state[n], clean[n]) for n in clean)
    for name, value in trained(honest, benign).items():
        np.testing.assert_array_equal(trained(scenario, benign)[name], value)


def test_a_federation_runs_end_to_end_on_a_gpt2_style_base_of_its_own(tmp_path: Path) -> None:
    # A base other than MiniLM: a tiny GPT-2 classifier built from a config and saved to a
    # folder (its own BPE tokenizer, no pad token), PEFT's default targets for GPT-2.
    base = save_tiny_gpt2(tmp_path / "gpt2")
    scenario = Scenario.of(
        strategy="lora", model=str(base), num_clients=2, clients_per_round=2, rounds=2,
        local_epochs=1, partitioner="iid", batch_size=16, max_length=16, train_records=64,
        test_records=32, lora_pooling="cls", results_dir=str(tmp_path / "run"),
    )  # fmt: skip

    summary = simulate(scenario, backend="local")

    assert summary["rounds"] == 2
    assert summary["model"]["target_modules"] == ["c_attn"]
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    state = read_arrays(tmp_path / "run" / FINAL_STATE)
    initial = task(scenario).initial_state()
    assert any(not np.array_equal(state[name], initial[name]) for name in initial)
