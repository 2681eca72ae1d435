"""Coarse ranking replies: buckets, round trips, and every reason one is rejected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.errors import InvalidUpdate
from fedrank.protos import update_pb2
from fedrank.protos.buckets import bucket_bounds, bucket_problem, rank_buckets
from fedrank.protos.coarse import (
    coarse_size_limit,
    decode_coarse_ranking_update,
    encode_coarse_ranking_update,
)
from fedrank.protos.packing import pack_values, packed_size, unpack_ranks
from fedrank.protos.serde import decode_ranking_update, encode_ranking_update, ranking_size_limit
from fedrank.protos.updates import RankingExpectation, UpdateHeader, model_fingerprint

FINGERPRINT = model_fingerprint(architecture="mlp-tiny", seed=7, k=0.5)
SIZES = {"fc1.weight": 24, "fc2.weight": 8, "fc3.weight": 3}
HEADER = UpdateHeader(run_id="run-a", round=4, model_fingerprint=FINGERPRINT)
BITS = 2


def expectation(bits: int = BITS, sizes: dict[str, int] = SIZES) -> RankingExpectation:
    return RankingExpectation(
        run_id="run-a",
        round=4,
        model_fingerprint=FINGERPRINT,
        layer_sizes=sizes,
        max_bytes=coarse_size_limit(sizes, bits),
        bucket_bits=bits,
    )


def buckets_of(seed: int = 0, bits: int = BITS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rank_buckets(rng.permutation(n), bits) for name, n in SIZES.items()}


def rejection(payload: bytes, expect: RankingExpectation | None = None) -> InvalidUpdate:
    with pytest.raises(InvalidUpdate) as caught:
        decode_coarse_ranking_update(payload, expect=expect or expectation())
    return caught.value


def test_bucket_bounds_split_the_ranks_into_shares_floor_rank_times_2b_over_n_puts_them() -> None:
    assert bucket_bounds(10, 2).tolist() == [0, 3, 5, 8, 10]
    assert bucket_bounds(3, 2).tolist() == [0, 1, 2, 3, 3]  # n < 2**b: one bucket stays empty
    for n in (1, 7, 10, 257):
        for bits in (1, 2, 4, 8):
            bounds = bucket_bounds(n, bits)
            buckets = rank_buckets(np.arange(n), bits)
            assert buckets.tolist() == [r * 2**bits // n for r in range(n)]
            assert np.bincount(buckets, minlength=2**bits).tolist() == np.diff(bounds).tolist()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), bits=st.integers(1, 16), seed=st.integers(0, 2**32 - 1))
def test_the_buckets_of_any_ranking_are_valid_and_pack_in_b_bits(
    n: int, bits: int, seed: int
) -> None:
    ranks = np.random.default_rng(seed).permutation(n)
    buckets = rank_buckets(ranks, bits)

    packed = pack_values(buckets, bits)

    assert bucket_problem(buckets, n=n, bits=bits) is None
    assert len(packed) == packed_size(n=n, bits=bits)
    np.testing.assert_array_equal(unpack_ranks(packed, n=n, bits=bits), buckets)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(1, 8))
def test_round_trip(seed: int, bits: int) -> None:
    layers = buckets_of(seed, bits)

    decoded = decode_coarse_ranking_update(
        encode_coarse_ranking_update(HEADER, layers, bits=bits), expect=expectation(bits)
    )

    assert list(decoded) == list(SIZES)
    for name, values in layers.items():
        np.testing.assert_array_equal(decoded[name], values)
        assert decoded[name].dtype == np.int64


def test_a_coarse_reply_costs_b_bits_an_edge() -> None:
    sizes = {"w": 100_000}
    ranks = np.random.default_rng(0).permutation(100_000)
    full = encode_ranking_update(HEADER, {"w": ranks})
    coarse = {
        bits: encode_coarse_ranking_update(HEADER, {"w": rank_buckets(ranks, bits)}, bits=bits)
        for bits in (2, 4, 8)
    }
    for bits, payload in coarse.items():
        assert (
            packed_size(n=100_000, bits=bits)
            < len(payload)
            < packed_size(n=100_000, bits=bits) + 100
        )
        assert len(payload) < coarse_size_limit(sizes, bits)
    assert len(full) > 2 * len(coarse[8])  # 17 bits an edge against 8


def test_counts_that_do_not_match_the_shares_are_rejected() -> None:
    layers = buckets_of()
    stuffed = layers["fc1.weight"].copy()
    stuffed[stuffed == 0] = 3  # every lowest-ranked edge claimed for the top bucket
    payload = encode_coarse_ranking_update(HEADER, {**layers, "fc1.weight": stuffed}, bits=BITS)

    error = rejection(payload)

    assert error.reason == "bad_bucket_counts"
    assert "fc1.weight" in str(error)


def test_a_bucket_no_rank_maps_to_is_out_of_range() -> None:
    layers = buckets_of()  # fc3 has 3 edges in 4 buckets: bucket 3 is empty
    assert 3 not in layers["fc3.weight"]
    moved = layers["fc3.weight"].copy()
    moved[moved == 2] = 3
    payload = encode_coarse_ranking_update(HEADER, {**layers, "fc3.weight": moved}, bits=BITS)

    assert rejection(payload).reason == "bucket_out_of_range"


def test_out_of_range_values_in_wider_fields_are_rejected() -> None:
    # A client that packs 3-bit values into a 2-bit run's layer is refused on its width;
    # values above 2**b - 1 can only arrive that way.
    payload = encode_coarse_ranking_update(HEADER, buckets_of(bits=3), bits=3)
    assert rejection(payload).reason == "bad_bits"
    assert bucket_problem(np.array([0, 1, 9]), n=3, bits=2) == (
        "bucket_out_of_range",
        "entry 2 is 9, outside 0..3 (1 entries out of range)",
    )
    assert bucket_problem(np.array([0, 1, -1]), n=3, bits=2) is not None


def test_structural_problems_are_rejected_with_their_reason() -> None:
    message = update_pb2.Update()
    message.ParseFromString(encode_coarse_ranking_update(HEADER, buckets_of(), bits=BITS))
    layer = message.coarse_ranking.layers[0]
    layer.length += 1
    assert rejection(message.SerializeToString(deterministic=True)).reason == "bad_length"
    layer.length -= 1
    layer.packed = layer.packed[:-1]
    assert rejection(message.SerializeToString(deterministic=True)).reason == "bad_length"

    message.ParseFromString(encode_coarse_ranking_update(HEADER, buckets_of(), bits=BITS))
    last = message.coarse_ranking.layers[2]  # 3 edges x 2 bits: 2 padding bits
    last.packed = bytes([last.packed[0] | 0x80])
    assert rejection(message.SerializeToString(deterministic=True)).reason == "bad_padding"

    missing = {k: v for k, v in buckets_of().items() if k != "fc2.weight"}
    assert rejection(encode_coarse_ranking_update(HEADER, missing, bits=BITS)).reason == (
        "missing_layer"
    )


def test_a_full_ranking_where_a_coarse_one_is_expected_is_the_wrong_kind_and_back() -> None:
    rng = np.random.default_rng(0)
    full = encode_ranking_update(HEADER, {n: rng.permutation(k) for n, k in SIZES.items()})
    coarse = encode_coarse_ranking_update(HEADER, buckets_of(), bits=BITS)

    assert rejection(full).reason == "wrong_kind"
    full_expect = RankingExpectation(
        run_id="run-a", round=4, model_fingerprint=FINGERPRINT, layer_sizes=SIZES,
        max_bytes=ranking_size_limit(SIZES),
    )  # fmt: skip
    with pytest.raises(InvalidUpdate) as caught:
        decode_ranking_update(coarse, expect=full_expect)
    assert caught.value.reason == "wrong_kind"


def test_encoding_refuses_what_cannot_be_packed() -> None:
    with pytest.raises(ValueError, match="bits"):
        encode_coarse_ranking_update(HEADER, buckets_of(), bits=17)
    with pytest.raises(ValueError, match=r"fc1\.weight"):
        encode_coarse_ranking_update(HEADER, {"fc1.weight": np.array([0, 4])}, bits=2)
    with pytest.raises(ValueError, match="at least one layer"):
        encode_coarse_ranking_update(HEADER, {}, bits=2)
