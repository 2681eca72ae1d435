"""Seeded sampling helpers: partition order is independent of the node ids."""

from __future__ import annotations

import pytest
from flwr.app import Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrank.strategies.sampling import in_partition_order, partition_order


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def reply_from(node: int) -> Message:
    sent = Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=node)
    return Message(RecordDict(), reply_to=sent)


def test_partition_order_sorts_nodes_by_partition_unknown_ones_last() -> None:
    partitions = {0: 30, 1: 10, 2: 20}

    ordered = partition_order([20, 99, 10, 30, 5], partitions)

    assert ordered == [30, 10, 20, 5, 99]
    assert partition_order([3, 1, 2]) == [1, 2, 3]


def test_replies_come_in_partition_order_whatever_their_arrival() -> None:
    partitions = {0: 30, 1: 10, 2: 20}
    replies = [reply_from(node) for node in (10, 20, 30)]

    ordered = in_partition_order(replies, partitions)

    assert [r.metadata.src_node_id for r in ordered] == [30, 10, 20]
