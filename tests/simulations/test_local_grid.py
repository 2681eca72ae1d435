"""The in-process Grid behaves like Flower's simulation runtime where it matters."""

from __future__ import annotations

import time

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedrank.simulations.local_grid import InProcessGrid, server_identity
from fedrank.strategies.sampling import PARTITION_KEY, discover_partitions

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    calls = int(context.state.config_records.get("calls", ConfigRecord({"n": 0}))["n"])  # type: ignore[arg-type]
    context.state["calls"] = ConfigRecord({"n": calls + 1})
    answer: dict[str, int] = {PARTITION_KEY: int(context.node_config[PARTITION_KEY])}
    if "ask" not in msg.content["config"]:  # not discovery, which wants the id alone
        answer["calls"] = calls + 1
    return Message(content=RecordDict({"config": ConfigRecord(answer)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    if int(context.node_config[PARTITION_KEY]) == 1:
        raise RuntimeError("partition 1 always fails")
    time.sleep(float(msg.content["config"]["sleep"]))  # type: ignore[arg-type]
    return Message(content=RecordDict(), reply_to=msg)


def _train(node: int, sleep: float = 0.0) -> Message:
    content = RecordDict({"config": ConfigRecord({"sleep": sleep})})
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)


@pytest.fixture
def grid() -> InProcessGrid:
    return InProcessGrid(app, num_nodes=3, seed=4)


def test_nodes_report_their_partitions_and_keep_their_context(grid: InProcessGrid) -> None:
    with server_identity(grid.run):
        mapping = discover_partitions(grid, expected=3, timeout=5)
        again = {
            int(r.content["config"][PARTITION_KEY]): int(r.content["config"]["calls"])  # type: ignore[arg-type]
            for r in grid.send_and_receive(
                [
                    Message(
                        content=RecordDict({"config": ConfigRecord()}),
                        dst_node_id=node,
                        message_type=MessageType.QUERY,
                    )
                    for node in mapping.values()
                ]
            )
        }
    assert sorted(mapping) == [0, 1, 2]
    assert again == {0: 2, 1: 2, 2: 2}


def test_a_raising_client_answers_with_an_error_reply(grid: InProcessGrid) -> None:
    with server_identity(grid.run):
        mapping = discover_partitions(grid, expected=3, timeout=5)
        replies = list(grid.send_and_receive([_train(mapping[p]) for p in range(3)]))
    errors = {r.metadata.src_node_id: r for r in replies if r.has_error()}
    assert list(errors) == [mapping[1]]
    assert errors[mapping[1]].error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "always fails" in errors[mapping[1]].error.reason
    assert len(replies) == 3


def test_messages_not_answered_before_the_timeout_get_no_reply(grid: InProcessGrid) -> None:
    # The first handler starts in time but finishes late (dropped, as Ray's late reply is
    # never pulled); the second never starts.
    with server_identity(grid.run):
        mapping = discover_partitions(grid, expected=3, timeout=5)
        replies = list(
            grid.send_and_receive([_train(mapping[0], 0.3), _train(mapping[2], 0.0)], timeout=0.1)
        )
        on_time = list(grid.send_and_receive([_train(mapping[0], 0.0)], timeout=5))
    assert replies == []
    assert [r.metadata.src_node_id for r in on_time] == [mapping[0]]


odd = ClientApp()


@odd.train()
def odd_train(msg: Message, context: Context) -> Message:
    kind = msg.content["config"]["kind"]
    if kind == "unlinked":  # a new message instead of a reply: the SuperLink drops it
        return Message(content=RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    if kind == "none":
        return None  # type: ignore[return-value]
    raise SystemExit(3)


@pytest.mark.parametrize("kind", ["unlinked", "none"])
def test_a_reply_the_superlink_would_drop_is_no_reply(kind: str) -> None:
    grid = InProcessGrid(odd, num_nodes=1, seed=1)
    node = next(iter(grid.get_node_ids()))
    content = RecordDict({"config": ConfigRecord({"kind": kind})})
    with server_identity(grid.run):
        message = Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)
        replies = list(grid.send_and_receive([message], timeout=5))

    assert replies == []  # counted once, as a missing reply, as on Ray


def test_a_client_that_exits_is_a_crashed_one() -> None:
    grid = InProcessGrid(odd, num_nodes=1, seed=1)
    node = next(iter(grid.get_node_ids()))
    content = RecordDict({"config": ConfigRecord({"kind": "exit"})})
    with server_identity(grid.run):
        message = Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)
        (reply,) = grid.send_and_receive([message], timeout=5)

    assert reply.error.code == ErrorCode.CLIENT_APP_CRASHED
