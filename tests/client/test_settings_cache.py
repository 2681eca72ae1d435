"""Discovery at scale: a process parses the run's settings once, whatever the node count."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrank.client import app as client_app
from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.protos import keys

SCENARIO = Scenario.of(dataset="digits", num_clients=50, clients_per_round=2, seed=4)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def node(pid: int) -> Context:
    return Context(
        run_id=1, node_id=100 + pid, node_config={keys.PARTITION_ID: pid}, state=RecordDict(),
        run_config={},
    )  # fmt: skip


def test_fifty_nodes_parse_the_settings_once_and_keep_the_record_they_got() -> None:
    settings = ConfigRecord(dict(SCENARIO.client_settings()))
    content = RecordDict(
        {keys.CONFIG: ConfigRecord({keys.ASK: keys.PARTITION_ID}), keys.RUN: settings}
    )
    client_app._parsed.cache_clear()
    nodes = [node(pid) for pid in range(50)]

    for pid, context in enumerate(nodes):
        message = Message(content=content, message_type=MessageType.QUERY, dst_node_id=100 + pid)
        answer = client_app.query(message, context)
        assert answer.content[keys.CONFIG][keys.PARTITION_ID] == pid

    info = client_app._parsed.cache_info()
    assert (info.misses, info.hits) == (1, 49)
    assert all(context.state[client_app.SETTINGS_STATE] is settings for context in nodes)


def test_settings_that_cannot_be_hashed_are_still_refused_naming_the_key() -> None:
    bad = ConfigRecord({**SCENARIO.client_settings(), "rounds": [1, 2]})
    message = Message(
        content=RecordDict({keys.RUN: bad}), message_type=MessageType.QUERY, dst_node_id=100
    )
    with pytest.raises(ConfigError, match="rounds"):
        client_app.run_settings(message, node(0))
