"""SeededFedAvg: Flower's averaging, FRL's sampling, and the same min-replies rule."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.common.constant import ErrorCode

from fedrank.protos.codecs import ArraysCodec
from fedrank.strategies.fedavg import SeededFedAvg

CODEC = ArraysCodec.for_state({"w": np.zeros(3, dtype=np.float32)})


def round_messages(strategy: SeededFedAvg) -> list[Message]:
    arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    return list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))  # type: ignore[arg-type]


def weights_reply(message: Message, value: float, examples: int) -> Message:
    arrays = ArrayRecord({"w": Array(np.full(3, value, dtype=np.float32))})
    metrics = MetricRecord({"num-examples": examples})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)


@pytest.mark.parametrize("min_replies", [2, 3])
def test_too_few_valid_replies_skip_the_round(flower_identity: None, min_replies: int) -> None:
    strategy = SeededFedAvg(
        codec=CODEC,
        partitions={0: 10, 1: 11, 2: 12},
        clients_per_round=3,
        seed=0,
        min_replies=min_replies,
    )
    messages = round_messages(strategy)
    replies = [
        weights_reply(messages[0], 1.0, 10),
        Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom"), reply_to=messages[1]),
    ]

    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is None
    assert metrics is not None
    assert (metrics["replies"], metrics["rejected"], metrics["rejected.client_error"]) == (1, 1, 1)


def test_enough_valid_replies_are_averaged_by_examples(flower_identity: None) -> None:
    strategy = SeededFedAvg(
        codec=CODEC, partitions={0: 10, 1: 11, 2: 12}, clients_per_round=3, min_replies=2
    )
    messages = round_messages(strategy)
    replies = [weights_reply(messages[0], 1.0, 10), weights_reply(messages[1], 4.0, 30)]

    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is not None
    assert metrics is not None
    np.testing.assert_allclose(arrays["w"].numpy(), (1.0 * 10 + 4.0 * 30) / 40)
    assert (metrics["replies"], metrics["rejected"]) == (2, 0)
