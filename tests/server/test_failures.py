"""Classifying a round's failed clients from Flower's replies."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict
from flwr.app.error import Error
from flwr.common.constant import ErrorCode

from fedrank.server.failures import ClientFailure, failure_counts, failure_reason, split_replies

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
