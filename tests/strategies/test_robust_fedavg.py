from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg, Krum, MultiKrum

from fedrank.protos.codecs import ArraysCodec
from fedrank.protos.records import from_array_record, to_array_record
from fedrank.strategies.fedavg import SeededFedAvg
from fedrank.strategies.robust_fedavg import seeded_fedavg

pytestmark = pytest.mark.usefixtures("flower_identity")

PARTITIONS = {p: 100 + p for p in range(10)}
CODEC = ArraysCodec.for_state({"w": np.zeros(5, dtype=np.float32)})


def _reply(node: int, weights: np.ndarray) -> Message:
    ins = Message(
        content=RecordDict({"config": ConfigRecord()}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )
    content = RecordDict(
        {"arrays": to_array_record({"w": weights}), "metrics": MetricRecord({"num-examples": 10})}
    )
    return Message(content=content, reply_to=ins)


@pytest.mark.parametrize(
    ("name", "flower_class"),
    [("median", FedMedian), ("trimmed", FedTrimmedAvg), ("krum", Krum), ("multikrum", MultiKrum)],
)
def test_each_aggregator_is_flowers_own_with_seeded_sampling(name: str, flower_class: type) -> None:
    strategy = seeded_fedavg(
        name, codec=CODEC, partitions=PARTITIONS, clients_per_round=10, trim_fraction=0.2
    )
    assert isinstance(strategy, flower_class)
    assert isinstance(strategy, SeededFedAvg)


def test_parameters_follow_the_trim_fraction() -> None:
    trimmed = seeded_fedavg(
        "trimmed", codec=CODEC, partitions=PARTITIONS, clients_per_round=10, trim_fraction=0.3
    )
    multikrum = seeded_fedavg(
        "multikrum", codec=CODEC, partitions=PARTITIONS, clients_per_round=10, trim_fraction=0.2
    )
    assert isinstance(trimmed, FedTrimmedAvg)
    assert trimmed.beta == 0.3
    assert isinstance(multikrum, MultiKrum)
    assert (multikrum.num_malicious_nodes, multikrum.num_nodes_to_select) == (2, 8)


def test_median_aggregates_coordinate_wise_and_leaves_the_replies_whole() -> None:
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=5).astype(np.float32) for _ in range(5)]
    weights.append(np.full(5, 1e6, dtype=np.float32))  # one wild reply
    replies = [_reply(100 + i, w) for i, w in enumerate(weights)]
    strategy = seeded_fedavg("median", codec=CODEC, partitions=PARTITIONS, clients_per_round=6)

    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is not None
    assert metrics is not None
    np.testing.assert_allclose(from_array_record(arrays)["w"], np.median(np.stack(weights), axis=0))
    assert metrics["replies"] == 6
    assert all("w" in r.content.array_records["arrays"] for r in replies)  # Flower pops copies


def test_unknown_aggregation_is_refused() -> None:
    with pytest.raises(ValueError, match="aggregation"):
        seeded_fedavg("borda", codec=CODEC, partitions=PARTITIONS, clients_per_round=10)
