"""Classifying a round's failed clients from Flower's replies."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict
from flwr.app.error import Error
from flwr.common.constant import ErrorCode

from fedrank.server.failures import (
    ClientFailure,
    ask_again_if_never_run,
    failure_counts,
    failure_reason,
    split_replies,
)

# Texts Flower 1.41 puts in the reply when Ray loses the actor (seen in real runs).
ACTOR_DIED = (
    "<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly before "
    "finishing this task.\nThe actor is dead because its worker process has died.'>"
)
SOCKET_CLOSED = (
    "<class 'ray.exceptions.ActorUnavailableError'>:<'The actor 45e0 is unavailable: The "
    "actor is temporarily unavailable: RpcError: RPC error: Socket closed rpc_code: 14.'>"
)
RESTARTING = (
    "<class 'ray.exceptions.ActorUnavailableError'>:<'The actor 45e0 is unavailable: The "
    "actor is temporarily unavailable: IOError: The actor is restarting.. The task may or "
    "may not have been executed on the actor.'>"
)
RAISED = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run()\n"
    '  File "faulty_client.py", line 50, in train\n'
    "RuntimeError: injected failure of partition 3 in round 1'>"
)


@pytest.mark.parametrize(
    ("code", "text", "reason"),
    [
        (ErrorCode.CLIENT_APP_RAISED_EXCEPTION, RAISED, "client_error"),
        (ErrorCode.LOAD_CLIENT_APP_EXCEPTION, "no module", "client_error"),
        (ErrorCode.UNKNOWN, ACTOR_DIED, "worker_died"),
        (ErrorCode.UNKNOWN, SOCKET_CLOSED, "worker_died"),
        (ErrorCode.UNKNOWN, RESTARTING, "worker_restarting"),
        (ErrorCode.CLIENT_APP_CRASHED, "exit code -9", "worker_died"),
        (ErrorCode.NODE_UNAVAILABLE, "node gone", "worker_died"),
        (ErrorCode.MESSAGE_UNAVAILABLE, "expired", "timeout"),
        (ErrorCode.REPLY_MESSAGE_UNAVAILABLE, "expired", "timeout"),
        (ErrorCode.UNKNOWN, "something else", "unknown"),
        (ErrorCode.UNKNOWN, None, "unknown"),
    ],
)
def test_failure_reason_from_code_and_text(code: int, text: str | None, reason: str) -> None:
    assert failure_reason(Error(code=code, reason=text)) == reason


def train_message(node: int) -> Message:
    arrays = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    return Message(RecordDict({"arrays": arrays}), dst_node_id=node, message_type=MessageType.TRAIN)


def test_split_replies_names_every_failure_and_keeps_the_answers(
    flower_identity: None, caplog: pytest.LogCaptureFixture
) -> None:
    # Arrange: four clients; one answers, one raised, one lost its worker, one is silent.
    messages = [train_message(node) for node in (11, 12, 13, 14)]
    answer = Message(RecordDict({"arrays": ArrayRecord()}), reply_to=messages[0])
    raised = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, RAISED), reply_to=messages[1])
    died = Message(Error(ErrorCode.UNKNOWN, ACTOR_DIED), reply_to=messages[2])

    # Act
    with caplog.at_level(logging.WARNING, logger="fedrank.server.failures"):
        answered, failures = split_replies(
            5,
            messages,
            [died, answer, raised],
            timeout=30.0,
            partition_of={11: 0, 12: 1, 13: 2, 14: 3},
        )

    # Assert
    assert answered == [answer]
    assert sorted(failures, key=lambda f: f.node_id) == [
        ClientFailure(
            12, 1, "client_error", "RuntimeError: injected failure of partition 3 in round 1"
        ),
        ClientFailure(
            13, 2, "worker_died", "The actor is dead because its worker process has died."
        ),
        ClientFailure(14, 3, "timeout", "no reply within 30 s"),
    ]
    assert failure_counts(failures) == {
        "rejected.client_error": 1,
        "rejected.timeout": 1,
        "rejected.worker_died": 1,
    }
    assert "round 5: partition 3 (node 14) excluded, timeout: no reply within 30 s" in caplog.text
    assert "round 5: partition 1 (node 12) excluded, client_error" in caplog.text


def test_no_failures_no_counts(flower_identity: None) -> None:
    messages = [train_message(1)]
    reply = Message(RecordDict(), reply_to=messages[0])
    answered, failures = split_replies(1, messages, [reply], timeout=1.0)
    assert (answered, failures, failure_counts(failures)) == ([reply], [], {})


class RetryGrid:
    """A grid whose nodes answer every message they get (what was sent is kept)."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send_and_receive(self, messages: list[Message], *, timeout: float) -> list[Message]:
        self.sent.extend(messages)
        return [Message(RecordDict({"arrays": ArrayRecord()}), reply_to=m) for m in messages]


def test_a_client_whose_actor_was_restarting_is_asked_again_once(flower_identity: None) -> None:
    # Arrange: node 12 met a restarting actor (it never ran); 13 raised; 11 answered.
    messages = [train_message(node) for node in (11, 12, 13)]
    replies = [
        Message(RecordDict({"arrays": ArrayRecord()}), reply_to=messages[0]),
        Message(Error(ErrorCode.UNKNOWN, RESTARTING), reply_to=messages[1]),
        Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, RAISED), reply_to=messages[2]),
    ]
    grid = RetryGrid()

    # Act
    out = ask_again_if_never_run(
        grid,  # type: ignore[arg-type]
        messages,
        replies,
        deadline=time.monotonic() + 30.0,
        pause=0.0,
    )

    # Assert: only 12 was asked again, with the same content; its answer replaces the error.
    assert [m.metadata.dst_node_id for m in grid.sent] == [12]
    assert grid.sent[0].content is messages[1].content
    answered, failures = split_replies(1, messages, out, timeout=30.0)
    assert sorted(r.metadata.src_node_id for r in answered) == [11, 12]
    assert [(f.node_id, f.reason) for f in failures] == [(13, "client_error")]


def test_no_time_left_means_no_second_ask(flower_identity: None) -> None:
    messages = [train_message(12)]
    replies = [Message(Error(ErrorCode.UNKNOWN, RESTARTING), reply_to=messages[0])]
    grid = RetryGrid()

    out = ask_again_if_never_run(
        grid,  # type: ignore[arg-type]
        messages,
        replies,
        deadline=time.monotonic(),
    )

    assert grid.sent == []
    assert [f.reason for f in split_replies(1, messages, out, timeout=1.0)[1]] == [
        "worker_restarting"
    ]
