"""Federated evaluation: the messages to every site, the reply gate, the weighted figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.app.message import make_message
from hypothesis import given
from hypothesis import strategies as st

from fedrank.errors import InvalidUpdate
from fedrank.protos import keys
from fedrank.protos.codecs import ArraysCodec
from fedrank.protos.evaluation import SiteEvaluation, evaluation_reply, read_evaluation
from fedrank.protos.records import to_array_record
from fedrank.strategies.evaluation import (
    FEDERATED_ACCURACY,
    FEDERATED_EXAMPLES,
    FEDERATED_LOSS,
    FEDERATED_REJECTED,
    FEDERATED_REPLIES,
    FederatedEvaluation,
    weighted_evaluation,
)
from fedrank.strategies.fedavg import SeededFedAvg

STATE = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
PARTITIONS = {0: 101, 1: 102, 2: 103}  # partition id -> node id


def reply_from(node: int, content: RecordDict) -> Message:
    message = make_message(
        metadata=Message(content=RecordDict(), dst_node_id=node, message_type="evaluate").metadata,
        content=content,
    )
    message.metadata.__dict__["_src_node_id"] = node
    return message


def wrapped() -> FederatedEvaluation:
    codec = ArraysCodec.for_state(STATE)
    inner = SeededFedAvg(codec=codec, partitions=PARTITIONS, clients_per_round=2)
    return FederatedEvaluation(inner, codec=codec, partitions=PARTITIONS)


@pytest.mark.usefixtures("flower_identity")
def test_every_site_gets_the_global_state_and_the_round() -> None:
    config = ConfigRecord({keys.SETTINGS_DIGEST: "abc"})
    messages = list(wrapped().configure_evaluate(4, to_array_record(STATE), config, grid=None))  # type: ignore[arg-type]

    assert [m.metadata.dst_node_id for m in messages] == [101, 102, 103]
    for message in messages:
        assert message.metadata.message_type == MessageType.EVALUATE
        assert message.content[keys.CONFIG][keys.SERVER_ROUND] == 4
        assert message.content[keys.CONFIG][keys.SETTINGS_DIGEST] == "abc"
        np.testing.assert_array_equal(message.content[keys.ARRAYS]["w"].numpy(), STATE["w"])
    assert dict(config) == {keys.SETTINGS_DIGEST: "abc"}  # not modified


def test_without_the_wrapper_no_site_is_asked() -> None:
    codec = ArraysCodec.for_state(STATE)
    plain = SeededFedAvg(codec=codec, partitions=PARTITIONS, clients_per_round=2)
    assert list(plain.configure_evaluate(1, to_array_record(STATE), ConfigRecord(), None)) == []  # type: ignore[arg-type]


def test_weighted_figures_golden() -> None:
    figures = weighted_evaluation([SiteEvaluation(0.5, 0.9, 10), SiteEvaluation(1.0, 0.6, 30)])
    assert figures[FEDERATED_EXAMPLES] == 40
    assert figures[FEDERATED_REPLIES] == 2
    assert figures[FEDERATED_LOSS] == pytest.approx((0.5 * 10 + 1.0 * 30) / 40)
    assert figures[FEDERATED_ACCURACY] == pytest.approx((0.9 * 10 + 0.6 * 30) / 40)


def test_no_valid_site_gives_counts_only() -> None:
    assert weighted_evaluation([]) == {FEDERATED_EXAMPLES: 0, FEDERATED_REPLIES: 0}


@given(
    st.lists(
        st.tuples(
            st.floats(0, 10),
            st.floats(0, 1),
            st.integers(1, 10_000),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_weighted_accuracy_lies_between_the_sites_and_ignores_order(
    sites: list[tuple[float, float, int]],
) -> None:
    results = [SiteEvaluation(*site) for site in sites]
    forward, backward = weighted_evaluation(results), weighted_evaluation(results[::-1])
    accuracies = [r.accuracy for r in results]
    assert min(accuracies) - 1e-12 <= forward[FEDERATED_ACCURACY] <= max(accuracies) + 1e-12
    assert math.isclose(forward[FEDERATED_ACCURACY], backward[FEDERATED_ACCURACY], abs_tol=1e-12)


@pytest.mark.usefixtures("flower_identity")
def test_aggregate_counts_refused_and_failed_sites_and_uses_only_valid_ones() -> None:
    good = evaluation_reply(SiteEvaluation(0.4, 0.75, 8))
    bad = RecordDict({keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5, keys.EVAL_LOSS: 0.1})})
    failed = Message(
        Error(code=0, reason="boom"),
        reply_to=Message(RecordDict(), dst_node_id=103, message_type="evaluate"),
    )
    replies = [reply_from(101, good), reply_from(102, bad), failed]

    figures = dict(wrapped().aggregate_evaluate(2, replies) or {})

    assert figures[FEDERATED_ACCURACY] == pytest.approx(0.75)
    assert figures[FEDERATED_LOSS] == pytest.approx(0.4)
    assert figures[FEDERATED_EXAMPLES] == 8
    assert figures[FEDERATED_REPLIES] == 1
    assert figures[FEDERATED_REJECTED] == 2


def metrics(**values: float) -> RecordDict:
    return RecordDict({keys.METRICS: MetricRecord(dict(values))})


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (RecordDict(), "missing_record"),
        (RecordDict({keys.ARRAYS: ArrayRecord()}), "unknown_record"),
        (metrics(**{keys.NUM_EXAMPLES: 3, keys.EVAL_LOSS: 0.1}), "unknown_metric"),
        (
            metrics(**{keys.NUM_EXAMPLES: 3, keys.EVAL_LOSS: 0.1, keys.EVAL_ACCURACY: 0.5, "x": 1}),
            "unknown_metric",
        ),
        (
            metrics(**{keys.NUM_EXAMPLES: 0, keys.EVAL_LOSS: 0.1, keys.EVAL_ACCURACY: 0.5}),
            "bad_num_examples",
        ),
        (
            metrics(**{keys.NUM_EXAMPLES: 2.5, keys.EVAL_LOSS: 0.1, keys.EVAL_ACCURACY: 0.5}),
            "bad_num_examples",
        ),
        (
            metrics(**{keys.NUM_EXAMPLES: 3, keys.EVAL_LOSS: -1.0, keys.EVAL_ACCURACY: 0.5}),
            "bad_metric",
        ),
        (
            metrics(**{keys.NUM_EXAMPLES: 3, keys.EVAL_LOSS: math.nan, keys.EVAL_ACCURACY: 0.5}),
            "bad_metric",
        ),
        (
            metrics(**{keys.NUM_EXAMPLES: 3, keys.EVAL_LOSS: 0.1, keys.EVAL_ACCURACY: 1.5}),
            "bad_metric",
        ),
    ],
)
def test_a_malformed_evaluation_is_refused_with_its_reason(
    content: RecordDict, reason: str
) -> None:
    with pytest.raises(InvalidUpdate) as err:
        read_evaluation(reply_from(101, content))
    assert err.value.reason == reason


@pytest.mark.usefixtures("flower_identity")
def test_a_site_reply_round_trips() -> None:
    evaluation = SiteEvaluation(0.25, 0.5, 12)
    assert read_evaluation(reply_from(101, evaluation_reply(evaluation))) == evaluation
