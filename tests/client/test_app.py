"""The ClientApp: settings once per run, a site's own data-path, replies through the codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrank.client.app import query, run_settings, train
from fedrank.config import Scenario
from fedrank.errors import ConfigError, FedrankError
from fedrank.protos import keys
from fedrank.tasks import load_task

SCENARIO = Scenario.of(
    dataset="digits", num_clients=4, clients_per_round=2, lr=1.0, local_epochs=1, rounds=2
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
        node_config={keys.PARTITION_ID: 0, **node_config},  # type: ignore[dict-item]
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


def train_message(scenario: Scenario = SCENARIO, *, digest: str | None = None) -> Message:
    task = load_task(scenario)
    content = task.codec(1).encode_global(1, task.initial_state())
    content[keys.CONFIG] = ConfigRecord(
        {keys.SERVER_ROUND: 1, keys.SETTINGS_DIGEST: digest or scenario.settings_digest()}
    )
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=5)


def reply_examples(reply: Message) -> int:
    return int(reply.content.metric_records[keys.METRICS][keys.NUM_EXAMPLES])


def test_the_settings_arrive_once_and_serve_every_round() -> None:
    ctx = context()
    answer = query(discovery(), ctx)
    assert answer.content[keys.CONFIG][keys.PARTITION_ID] == 0

    reply = train(train_message(), ctx)  # the train message carries no settings

    assert reply_examples(reply) == len(load_task(SCENARIO).partition_data(0))
    assert run_settings(train_message(), ctx) == Scenario.from_mapping(SCENARIO.client_settings())


def test_a_node_without_settings_or_with_another_runs_says_so() -> None:
    with pytest.raises(FedrankError, match="no settings"):
        train(train_message(), context())
    ctx = context()
    query(discovery(), ctx)
    with pytest.raises(FedrankError, match="another run"):
        train(train_message(digest="0" * 16), ctx)


def test_a_site_trains_on_its_own_file(tmp_path: Path) -> None:
    own = load_task(SCENARIO).partition_data(3)
    np.savez(tmp_path / "own.npz", images=own.images[:40], labels=own.labels[:40])
    ctx = context(**{"data-path": str(tmp_path / "own.npz")})
    query(discovery(), ctx)

    assert reply_examples(train(train_message(), ctx)) == 40


@pytest.mark.parametrize("value", [3, ""])
def test_data_path_must_be_a_path(value: object) -> None:
    with pytest.raises(ConfigError, match="data-path"):
        query(discovery(), context(**{"data-path": value}))


def test_a_site_whose_file_has_the_wrong_shape_refuses_at_discovery(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mnist.npz", images=rng.random((4, 1, 28, 28)), labels=np.arange(4))

    with pytest.raises(ConfigError, match=r"\(N, 1, 8, 8\)"):
        query(discovery(), context(**{"data-path": str(tmp_path / "mnist.npz")}))


@pytest.mark.parametrize("value", [None, -1, "0", 1.5])
def test_a_node_without_a_valid_partition_id_says_how_to_set_it(value: object) -> None:
    ctx = context()
    ctx.node_config = {} if value is None else {keys.PARTITION_ID: value}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="--node-config"):
        query(discovery(), ctx)
