"""The Borda vote over coarse rankings, alone and behind FrlVote's gate."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.protos.buckets import bucket_problem, rank_buckets
from fedrank.protos.codecs import RankingCodec, Reply
from fedrank.protos.ranking_wire import RankingWire
from fedrank.protos.records import from_array_record, to_array_record
from fedrank.strategies.coarse import bucket_midpoints, coarse_borda_vote, coarse_vote
from fedrank.strategies.frl import FrlVote, frl_strategy
from fedrank.strategies.ranking import anchored_ranks, borda_vote

SIZES = {"fc1": 40, "fc2": 7}
WIRE = RankingWire.for_model(run_id=7, layer_sizes=SIZES, model="mlp", seed=1, k=0.5)


def permutations(m: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(m)])


def test_midpoints_and_a_golden_vote() -> None:
    # 4 edges in 2 buckets of 2: ranks {0, 1} -> bucket 0 (mid 0.5), {2, 3} -> 1 (mid 2.5).
    assert bucket_midpoints(4, 1).tolist() == [1, 5]  # twice the mid-ranks
    assert bucket_midpoints(10, 2).tolist() == [2, 7, 12, 17]  # ranks 0-2, 3-4, 5-7, 8-9
    stacked = np.array([[0, 1, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]])
    # sums of twice the mid-ranks: edge 0: 1+5+1=7, edge 1: 15, edge 2: 11, edge 3: 11.
    assert coarse_borda_vote(stacked, bits=1).tolist() == [0, 3, 1, 2]  # tie: index order
    reference = np.array([0, 1, 3, 2])
    assert coarse_borda_vote(stacked, bits=1, tie_break=reference).tolist() == [0, 3, 2, 1]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 64), m=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_with_a_bucket_per_rank_it_is_borda(n: int, m: int, seed: int) -> None:
    ranks = permutations(m, n, seed)
    bits = max(1, (n - 1).bit_length())  # 2**bits >= n: every bucket holds one rank at most
    buckets = np.stack([rank_buckets(r, bits) for r in ranks])

    np.testing.assert_array_equal(coarse_borda_vote(buckets, bits=bits), borda_vote(ranks))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 64),
    m=st.integers(1, 6),
    anchor=st.floats(0.0, 50.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_smoothed_with_a_bucket_per_rank_it_is_the_smoothed_borda_vote(
    n: int, m: int, anchor: float, seed: int
) -> None:
    ranks = permutations(m, n, seed)
    reference = np.random.default_rng(seed + 1).permutation(n)
    bits = max(1, (n - 1).bit_length())
    buckets = np.stack([rank_buckets(r, bits) for r in ranks])
    sums = ranks.sum(axis=0, dtype=np.int64).astype(np.float64)

    voted = coarse_borda_vote(buckets, bits=bits, anchor=anchor, reference=reference)

    expected = anchored_ranks(sums, float(m), reference, anchor=anchor)
    np.testing.assert_array_equal(voted, expected)


def test_a_heavy_anchor_keeps_the_reference_and_none_is_the_plain_vote() -> None:
    n, bits = 300, 3
    buckets = np.stack([rank_buckets(r, bits) for r in permutations(5, n, 0)])
    reference = np.random.default_rng(1).permutation(n)

    heavy = coarse_borda_vote(
        buckets, bits=bits, tie_break=reference, anchor=1e6, reference=reference
    )
    light = coarse_borda_vote(
        buckets, bits=bits, tie_break=reference, anchor=0.1, reference=reference
    )
    plain = coarse_borda_vote(buckets, bits=bits, tie_break=reference)

    np.testing.assert_array_equal(heavy, reference)
    np.testing.assert_array_equal(
        coarse_borda_vote(buckets, bits=bits, tie_break=reference, anchor=0.0), plain
    )
    # Smoothing moves the ranking less far from the reference than the plain vote does.
    assert np.abs(light - reference).sum() < np.abs(plain - reference).sum()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    m=st.integers(1, 8),
    bits=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_vote_is_a_permutation_independent_of_client_order(
    n: int, m: int, bits: int, seed: int
) -> None:
    buckets = np.stack([rank_buckets(r, bits) for r in permutations(m, n, seed)])
    reference = np.random.default_rng(seed + 1).permutation(n)

    voted = coarse_borda_vote(buckets, bits=bits, tie_break=reference)
    shuffled = coarse_borda_vote(buckets[::-1], bits=bits, tie_break=reference)

    assert sorted(voted.tolist()) == list(range(n))
    np.testing.assert_array_equal(voted, shuffled)


def test_edges_no_client_tells_apart_keep_the_reference_order() -> None:
    n, bits = 40, 1
    reply = rank_buckets(np.random.default_rng(0).permutation(n), bits)
    reference = np.random.default_rng(1).permutation(n)

    voted = coarse_borda_vote(reply[None, :], bits=bits, tie_break=reference)

    for half in (0, 1):  # inside each bucket, the previous global order stands
        edges = np.flatnonzero(reply == half)
        assert np.argsort(voted[edges]).tolist() == np.argsort(reference[edges]).tolist()
        assert (voted[edges] >= half * n // 2).all()
        assert (voted[edges] < (half + 1) * n // 2).all()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="bits"):
        coarse_vote(0)
    with pytest.raises(ValueError, match="tie_break"):
        coarse_vote(2, tie_break="random")
    with pytest.raises(ValueError, match="shape"):
        coarse_borda_vote(np.zeros((2, 4), dtype=np.int64), bits=1, tie_break=np.arange(3))
    with pytest.raises(ValueError, match="reference"):
        coarse_borda_vote(np.zeros((2, 4), dtype=np.int64), bits=1, anchor=0.5)
    with pytest.raises(ValueError, match="anchor"):
        coarse_borda_vote(
            np.zeros((2, 4), dtype=np.int64), bits=1, anchor=-1.0, reference=np.arange(4)
        )


# ------------------------------------------------------------------ behind the gate


def _reply(node: int, content: RecordDict) -> Message:
    ins = Message(
        content=RecordDict({"config": ConfigRecord()}), dst_node_id=node,
        message_type=MessageType.TRAIN,
    )  # fmt: skip
    return Message(content=content, reply_to=ins)


@pytest.mark.usefixtures("flower_identity")
def test_frl_votes_coarse_replies_and_rejects_stuffed_buckets() -> None:
    bits = 2
    codec = RankingCodec(WIRE, reply_bits=bits)
    strategy = FrlVote(
        partitions={p: 100 + p for p in range(5)}, clients_per_round=5, codec=codec,
        vote=coarse_vote(bits),
    )  # fmt: skip
    sent = {name: np.random.default_rng(9).permutation(n) for name, n in SIZES.items()}
    strategy.configure_train(1, to_array_record(sent), ConfigRecord(), grid=None)  # type: ignore[arg-type]  # no grid needed
    clients = [
        {name: np.random.default_rng(s).permutation(n) for name, n in SIZES.items()}
        for s in range(4)
    ]
    replies = [
        _reply(100 + i, codec.encode_reply(1, Reply(state=c, num_examples=5)))
        for i, c in enumerate(clients)
    ]
    stuffed = {name: rank_buckets(r, bits) for name, r in clients[0].items()}
    stuffed["fc1"] = np.full(SIZES["fc1"], 3)  # every edge in the top bucket
    content = WIRE.encode_buckets(1, stuffed, bits=bits)
    content["metrics"] = replies[0].content["metrics"]
    replies.append(_reply(104, content))

    arrays, metrics = strategy.aggregate_train(1, replies)

    assert metrics is not None
    assert (metrics["replies"], metrics["rejected.bad_bucket_counts"]) == (4, 1)
    assert arrays is not None
    voted = from_array_record(arrays)
    for name, n in SIZES.items():
        buckets = np.stack([rank_buckets(c[name], bits) for c in clients])
        assert all(bucket_problem(b, n=n, bits=bits) is None for b in buckets)
        expected = coarse_borda_vote(buckets, bits=bits, tie_break=sent[name])
        np.testing.assert_array_equal(voted[name], expected)


def test_the_scenario_picks_the_coarse_vote_smoothed_or_not() -> None:
    for smoothing in (0.0, 0.1):
        strategy = frl_strategy(
            Scenario.of(rank_bits=4, vote_smoothing=smoothing),
            codec=RankingCodec(WIRE, reply_bits=4),
            partitions={0: 1},
        )
        assert strategy.vote.__qualname__.startswith("coarse_vote")
        assert strategy.smoothing == smoothing


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Scenario.of(strategy="fedavg", rank_bits=2), "need strategy frl"),
        (lambda: Scenario.of(aggregator="filtered", rank_bits=2), "Borda on bucket midpoints"),
        (
            lambda: Scenario.of(attack="reverse_ranking", malicious_fraction=0.2, rank_bits=2),
            "full",
        ),
        (lambda: Scenario.of(rank_bits=17), r"\[0, 16\]"),
    ],
)
def test_coarse_settings_that_cannot_run_are_refused(
    build: Callable[[], Scenario], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        build()
    assert caught.value.field == "rank-bits"
