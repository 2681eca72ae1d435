"""The LoRA ClientApp handler: one round of training, accountant kept in the node's state."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrank.client.lora_app import (
    load_history,
    lora_train,
    planned_steps,
    sample_noise_multiplier,
)
from fedrank.client.lora_trainer import steps_per_epoch
from fedrank.config import Scenario
from fedrank.lora_task import client_text, initial_adapter
from fedrank.models.lora import _pristine_model
from fedrank.privacy.accountant import compute_epsilon
from fedrank.protos import decode_privacy_report
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
