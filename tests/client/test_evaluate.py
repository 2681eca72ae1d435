"""The ClientApp's federated evaluation: the global state on the site's held-out examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrank.client.app import SETTINGS_STATE, evaluate, query, train
from fedrank.config import Scenario
from fedrank.errors import FedrankError
from fedrank.protos import keys
from fedrank.protos.evaluation import read_evaluation
from fedrank.tasks import load_task

SCENARIO = Scenario.of(
    dataset="digits",
    num_clients=3,
    clients_per_round=2,
    lr=1.0,
    local_epochs=1,
    rounds=2,
    eval_fraction=0.2,
    seed=11,
)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def context(**node_config: object) -> Context:
    return Context(
        run_id=1,
        node_id=5,
        node_config={keys.PARTITION_ID: 1, **node_config},  # type: ignore[dict-item]
        state=RecordDict(),
        run_config={},
    )


def discovery(scenario: Scenario = SCENARIO) -> Message:
    content = RecordDict(
        {
            keys.CONFIG: ConfigRecord({keys.ASK: keys.PARTITION_ID}),
            keys.RUN: ConfigRecord(dict(scenario.client_settings())),
        }
    )
    return Message(content=content, message_type=MessageType.QUERY, dst_node_id=5)


def server_message(kind: str, scenario: Scenario = SCENARIO) -> Message:
    task = load_task(scenario)
    content = task.codec(1).encode_global(1, task.initial_state())
    content[keys.CONFIG] = ConfigRecord(
        {keys.SERVER_ROUND: 1, keys.SETTINGS_DIGEST: scenario.settings_digest()}
    )
    return Message(content=content, message_type=kind, dst_node_id=5)


def test_discovery_keeps_exactly_the_client_settings() -> None:
    ctx = context()
    query(discovery(), ctx)
    assert dict(ctx.state.config_records[SETTINGS_STATE]) == SCENARIO.client_settings()


def test_a_site_evaluates_on_its_held_out_part_and_trains_on_the_rest() -> None:
    ctx = context()
    query(discovery(), ctx)
    task = load_task(SCENARIO)
    partition = task.partition_data(1)
    train_part, held = task.split_local(partition, partition_id=1)

    reply = evaluate(server_message(MessageType.EVALUATE), ctx)
    trained = train(server_message(MessageType.TRAIN), ctx)

    figures = read_evaluation(reply)
    assert figures.num_examples == len(held) == round(0.2 * len(partition))
    expected_loss, expected_accuracy = task.evaluate_local(task.initial_state(), held)
    assert figures.loss == pytest.approx(expected_loss)
    assert figures.accuracy == pytest.approx(expected_accuracy)
    examples = trained.content.metric_records[keys.METRICS][keys.NUM_EXAMPLES]
    assert examples == len(train_part)


def test_a_site_with_its_own_data_holds_out_part_of_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "site.npz"
    np.savez(path, images=rng.random((50, 1, 8, 8)), labels=rng.integers(0, 10, 50))
    ctx = context(**{"data-path": str(path)})
    query(discovery(), ctx)
    figures = read_evaluation(evaluate(server_message(MessageType.EVALUATE), ctx))
    assert figures.num_examples == 10


def test_a_site_asked_to_evaluate_without_a_held_out_part_says_so() -> None:
    scenario = SCENARIO.replace(eval_fraction=0.0)
    ctx = context()
    query(discovery(scenario), ctx)
    with pytest.raises(FedrankError, match="holds no example out"):
        evaluate(server_message(MessageType.EVALUATE, scenario), ctx)
