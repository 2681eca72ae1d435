"""The text LoRA task: one round of training, accountant kept in the node's state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrank.config import Scenario
from fedrank.models.lora import _pristine_model
from fedrank.privacy.accountant import compute_epsilon, history_from_array, history_to_array
from fedrank.privacy.plan import planned_steps, sample_noise_multiplier, steps_per_epoch
from fedrank.protos import keys
from fedrank.protos.codecs import Reply
from fedrank.protos.records import to_array_record
from fedrank.simulations.attacks.collusion import malicious_partitions
from fedrank.simulations.attacks.poisoning import poisoned
from fedrank.tasks import load_task
from fedrank.tasks.text_lora import ACCOUNTANT_KEY, TextLoraTask, starting_history

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
    return history_from_array(state.array_records[ACCOUNTANT_KEY][keys.HISTORY].numpy())


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


def test_starting_history_takes_the_longer_of_the_own_and_the_recorded() -> None:
    own = ((1.0, 0.25, 8),)
    recorded = ((1.0, 0.25, 4),)

    assert starting_history((), recorded) == recorded  # own state lost: the ledger's
    assert starting_history(own, recorded) == own  # a reply the server never got
    assert starting_history(recorded, recorded) == recorded


def test_a_client_whose_state_was_lost_resumes_from_the_recorded_history() -> None:
    # Arrange: round 1 on a node that keeps its state; its round-1 history is recorded.
    kept = RecordDict()
    first = lora_train(task().initial_state(), kept, SCENARIO, 1, 1)
    tensors = first.state
    recorded = RecordDict(
        {
            keys.PRIVACY_HISTORY: to_array_record(
                {keys.HISTORY: history_to_array(load_history(kept))}
            )
        }
    )
    lost = RecordDict()

    # Act: round 2 on the same node, and on a new one that only has the server's record.
    same = lora_train(tensors, kept, SCENARIO, 2, 1)
    resumed = lora_train(tensors, lost, SCENARIO, 2, 1, message=recorded)

    # Assert: the same epsilon, history and adapter, not a restart from zero.
    assert same.privacy is not None
    assert resumed.privacy is not None
    assert resumed.privacy.epsilon_spent == same.privacy.epsilon_spent
    assert load_history(lost) == load_history(kept)
    for name, value in same.state.items():
        np.testing.assert_array_equal(resumed.state[name], value)


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
