"""The LoRA ClientApp handler: one round of training, accountant kept in the node's state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrank.client.collusion import malicious_partitions
from fedrank.client.lora_app import (
    load_history,
    lora_train,
    planned_steps,
    sample_noise_multiplier,
    starting_history,
)
from fedrank.client.lora_trainer import steps_per_epoch
from fedrank.client.poisoning import poisoned_records, poisoned_text
from fedrank.config import Scenario
from fedrank.lora_task import client_text, initial_adapter
from fedrank.models.lora import _pristine_model
from fedrank.privacy.accountant import compute_epsilon, history_to_array
from fedrank.protos import decode_privacy_report
from fedrank.strategies.dp_sample_level import HISTORY_ARRAY, HISTORY_RECORD
from fedrank.strategies.records import from_array_record, to_array_record

SCENARIO = Scenario(
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


def train_message(tensors: dict[str, np.ndarray]) -> Message:
    content = RecordDict({"arrays": to_array_record(tensors), "config": ConfigRecord({})})
    message = Message(content=content, message_type=MessageType.TRAIN, dst_node_id=5)
    return message


def test_the_accountant_outlives_the_round_in_the_nodes_state() -> None:
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    tensors = initial_adapter(SCENARIO)
    n = len(client_text(SCENARIO, 1))
    sigma = sample_noise_multiplier(SCENARIO, n)
    q = 1 / steps_per_epoch(num_examples=n, batch_size=8)

    loads_before = _pristine_model.cache_info().misses
    reports = []
    for server_round in (1, 2):
        reply = lora_train(train_message(tensors), context, SCENARIO, server_round, 1)
        reports.append(decode_privacy_report(reply.content["privacy"]["report"]))  # type: ignore[arg-type]
        tensors = from_array_record(reply.content.array_records["arrays"])

    per_round = steps_per_epoch(num_examples=n, batch_size=8)
    assert [r.steps for r in reports] == [per_round, per_round]
    assert reports[1].epsilon_spent == compute_epsilon(
        history=[(sigma, q, 2 * per_round)], delta=1e-5, accountant="rdp"
    )
    assert reports[1].epsilon_spent > reports[0].epsilon_spent
    assert load_history(context) == ((sigma, q, 2 * per_round),)
    # The base model, loaded for the initial adapter, was not loaded again for a round.
    assert _pristine_model.cache_info().misses == loads_before


def test_the_noise_for_a_target_keeps_it_over_every_planned_round() -> None:
    n = len(client_text(SCENARIO, 0))
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
    kept = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    first = lora_train(train_message(initial_adapter(SCENARIO)), kept, SCENARIO, 1, 1)
    tensors = from_array_record(first.content.array_records["arrays"])
    recorded = train_message(tensors)
    recorded.content[HISTORY_RECORD] = to_array_record(
        {HISTORY_ARRAY: history_to_array(load_history(kept))}
    )
    lost = Context(run_id=2, node_id=6, node_config={}, state=RecordDict(), run_config={})

    # Act: round 2 on the same node, and on a new one that only has the server's record.
    same = lora_train(train_message(tensors), kept, SCENARIO, 2, 1)
    resumed = lora_train(recorded, lost, SCENARIO, 2, 1)

    # Assert: the same epsilon, history and adapter, not a restart from zero.
    reports = [decode_privacy_report(r.content["privacy"]["report"]) for r in (same, resumed)]  # type: ignore[arg-type]
    assert reports[1].epsilon_spent == reports[0].epsilon_spent
    assert load_history(lost) == load_history(kept)
    expected = from_array_record(same.content.array_records["arrays"])
    got = from_array_record(resumed.content.array_records["arrays"])
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)


def test_a_label_flipping_lora_client_trains_on_its_records_with_labels_reversed() -> None:
    scenario = SCENARIO.replace(
        dp="none", dp_target_epsilon=0.0, attack="label_flip", malicious_fraction=0.5
    )
    (malicious,) = malicious_partitions(scenario)
    benign = 1 - malicious
    own = client_text(scenario, malicious)

    flipped = poisoned_text(scenario, malicious, own, num_classes=2)

    assert torch.equal(flipped.labels, 1 - own.labels)
    assert torch.equal(flipped.input_ids, own.input_ids)
    honest = scenario.replace(attack="none", malicious_fraction=0.0)

    def trained(s: Scenario, pid: int) -> dict[str, np.ndarray]:
        # As the poisoning ClientApp trains: on poisoned_records.
        context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
        message = train_message(initial_adapter(s))
        reply = lora_train(message, context, s, 1, pid, records=poisoned_records)
        return from_array_record(reply.content.array_records["arrays"])

    poisoned, clean = trained(scenario, malicious), trained(honest, malicious)
    assert any(not np.array_equal(poisoned[n], clean[n]) for n in clean)
    for name, value in trained(honest, benign).items():
        np.testing.assert_array_equal(trained(scenario, benign)[name], value)
