import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedrank.protos import UpdateHeader, encode_ranking_update
from fedrank.protos.codecs import RankingCodec
from fedrank.protos.ranking_wire import RankingWire
from fedrank.protos.records import from_array_record, to_array_record
from fedrank.strategies.frl import FrlVote
from fedrank.strategies.ranking import borda_vote
from fedrank.strategies.sampling import sample_partitions

pytestmark = pytest.mark.usefixtures("flower_identity")

SIZES = {"fc1": 6, "fc2": 4}
WIRE = RankingWire.for_model(run_id=7, layer_sizes=SIZES, model="mlp", seed=1, k=0.5)


def _strategy(min_replies: int = 1) -> FrlVote:
    return FrlVote(
        partitions={p: 100 + p for p in range(5)},
        clients_per_round=3,
        codec=RankingCodec(WIRE),
        min_replies=min_replies,
        seed=1,
    )


def _reply(node: int, arrays: dict[str, np.ndarray], *, server_round: int = 1) -> Message:
    """A client's reply, encoded the way the ClientApp encodes it (no validation)."""
    header = UpdateHeader(run_id="7", round=server_round, model_fingerprint=WIRE.fingerprint)
    payload = encode_ranking_update(header, arrays)
    return _raw_reply(node, RecordDict({"update": ConfigRecord({"ranking": payload})}))


def _raw_reply(node: int, content: RecordDict) -> Message:
    ins = Message(
        content=RecordDict({"config": ConfigRecord()}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )
    content["metrics"] = MetricRecord({"num-examples": 1})
    return Message(content=content, reply_to=ins)


def _valid(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.permutation(n) for name, n in SIZES.items()}


def test_bad_replies_are_rejected_counted_and_the_round_goes_on() -> None:
    good = [_valid(s) for s in range(3)]
    bad_dup = {**_valid(9), "fc1": np.array([0, 0, 1, 2, 3, 4])}
    missing = {"fc1": np.arange(6)}
    replies = [_reply(100 + i, u) for i, u in enumerate(good)]
    replies += [_reply(200, bad_dup), _reply(201, missing)]
    replies += [_reply(202, _valid(5), server_round=0)]  # a replay of an earlier round
    replies += [_raw_reply(203, RecordDict({"update": ConfigRecord({"ranking": b"\x00junk"})}))]
    replies += [_raw_reply(204, RecordDict({"arrays": to_array_record(_valid(6))}))]

    arrays, metrics = _strategy().aggregate_train(1, replies)

    assert arrays is not None
    assert metrics is not None
    assert metrics["replies"] == 3
    assert metrics["rejected"] == 5
    assert metrics["rejected.not_permutation"] == 1
    assert metrics["rejected.missing_layer"] == 1
    assert metrics["rejected.round"] == 1
    assert metrics["rejected.malformed"] == 1
    assert metrics["rejected.unknown_record"] == 1  # arrays where a ranking belongs
    voted = from_array_record(arrays)
    for name in SIZES:
        np.testing.assert_array_equal(voted[name], borda_vote(np.stack([g[name] for g in good])))


def test_too_few_valid_replies_skip_the_round() -> None:
    replies = [
        _reply(100, _valid(0), server_round=4),
        _reply(101, {**_valid(1), "fc1": np.zeros(6, dtype=np.int64)}, server_round=4),
    ]
    arrays, metrics = _strategy(min_replies=2).aggregate_train(4, replies)
    assert arrays is None
    assert metrics is not None
    assert metrics["replies"] == 1
    assert metrics["rejected"] == 1


def test_sampling_is_seeded_by_seed_and_round() -> None:
    pool = list(range(50))
    a = sample_partitions(pool, count=10, seed=0, server_round=3)
    assert a == sample_partitions(pool, count=10, seed=0, server_round=3)
    assert a != sample_partitions(pool, count=10, seed=0, server_round=4)
    assert len(set(a)) == 10


def test_configure_train_sends_the_packed_global_ranking_to_the_sampled_nodes() -> None:
    strategy = _strategy()
    global_ranking = _valid(0)
    messages = list(
        strategy.configure_train(
            2, to_array_record(global_ranking), ConfigRecord({"k": 0.5}), grid=None
        )  # type: ignore[arg-type]
    )
    chosen = sample_partitions(strategy.partitions, count=3, seed=1, server_round=2)
    assert sorted(m.metadata.dst_node_id for m in messages) == [100 + p for p in chosen]
    assert messages[0].content.config_records["config"]["server-round"] == 2
    received = WIRE.decode(2, messages[0].content)  # what a client decodes
    for name in SIZES:
        np.testing.assert_array_equal(received[name], global_ranking[name])


def test_the_vote_sees_the_valid_replies_and_the_ranking_sent_this_round() -> None:
    calls: list[tuple[int, dict[str, np.ndarray]]] = []
    anchors: list[float] = []

    def vote(updates, reference, anchor):  # type: ignore[no-untyped-def]
        calls.append((len(updates), dict(reference)))
        anchors.append(anchor)
        return dict(updates[0]), 2

    strategy = FrlVote(
        partitions={p: 100 + p for p in range(5)},
        clients_per_round=3,
        codec=RankingCodec(WIRE),
        vote=vote,
        smoothing=0.25,
    )
    sent = _valid(42)
    strategy.configure_train(3, to_array_record(sent), ConfigRecord(), grid=None)  # type: ignore[arg-type]
    replies = [_reply(100 + i, _valid(i), server_round=3) for i in range(3)]

    arrays, metrics = strategy.aggregate_train(3, replies)

    assert arrays is not None
    assert metrics is not None
    assert metrics["filtered"] == 2
    assert calls[0][0] == 3
    assert anchors == [0.75]  # smoothing x round
    for name in SIZES:
        np.testing.assert_array_equal(calls[0][1][name], sent[name])
        np.testing.assert_array_equal(from_array_record(arrays)[name], _valid(0)[name])
