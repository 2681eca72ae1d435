"""Bit-packing of rank vectors: layout, round trips, permutation checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.protos.packing import (
    bits_for,
    pack_ranks,
    pack_values,
    packed_size,
    padding_is_zero,
    permutation_problem,
    unpack_permutation,
    unpack_ranks,
)

# 1, 2, every power of two up to 2**14 and its neighbours, and a few odd sizes.
SPECIAL_SIZES = sorted(
    {1, 2, 3} | {2**p + d for p in range(1, 15) for d in (-1, 0, 1)} | {7, 9, 100, 1000, 1001}
)
sizes = st.one_of(st.sampled_from(SPECIAL_SIZES), st.integers(min_value=1, max_value=20_000))
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def reference_pack(values: list[int], bits: int) -> bytes:
    """The stream layout, written out one entry at a time with Python integers."""
    stream = 0
    for index, value in enumerate(values):
        stream |= value << (index * bits)
    return stream.to_bytes((len(values) * bits + 7) // 8, "little")


@pytest.mark.parametrize(
    ("n", "bits"), [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (1024, 10), (1025, 11), (1_600_000, 21)]
)
def test_bits_for_is_ceil_log2_at_least_one(n: int, bits: int) -> None:
    assert bits_for(n) == bits


def test_bits_for_rejects_empty() -> None:
    with pytest.raises(ValueError, match="n:"):
        bits_for(0)


def test_layout_is_lsb_first_little_endian() -> None:
    # [0, 1, 2, 3] in 2 bits each: 0b11_10_01_00.
    assert pack_ranks(np.array([0, 1, 2, 3])) == (bytes([0b11100100]), 2)
    # [1, 0] in 1 bit each, the 6 padding bits zero.
    assert pack_ranks(np.array([1, 0])) == (b"\x01", 1)
    # [4, 0, 1, 3, 2] in 3 bits: 100 000 001 011 010 from entry 0 upward.
    assert pack_ranks(np.array([4, 0, 1, 3, 2])) == (
        (0b010_011_001_000_100).to_bytes(2, "little"),
        3,
    )


@settings(max_examples=60, deadline=None)
@given(n=sizes, seed=seeds)
def test_permutation_round_trips_and_matches_reference(n: int, seed: int) -> None:
    ranks = np.random.default_rng(seed).permutation(n)

    data, bits = pack_ranks(ranks)
    decoded = unpack_ranks(data, n=n, bits=bits)

    assert bits == bits_for(n)
    assert len(data) == packed_size(n=n, bits=bits)
    assert padding_is_zero(data, n=n, bits=bits)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, ranks)
    if n <= 3000:
        assert data == reference_pack(ranks.tolist(), bits)


@settings(max_examples=40, deadline=None)
@given(n=sizes, seed=seeds, dtype=st.sampled_from([np.int64, np.int32, np.uint32, np.uint64]))
def test_any_in_range_vector_round_trips(n: int, seed: int, dtype: type) -> None:
    # Not only permutations: the codec itself carries any value in 0..n-1.
    values = np.random.default_rng(seed).integers(0, n, size=n).astype(dtype)

    data, bits = pack_ranks(values)

    np.testing.assert_array_equal(unpack_ranks(data, n=n, bits=bits), values)


def test_unpack_returns_a_new_writable_array() -> None:
    data, bits = pack_ranks(np.arange(10))

    decoded = unpack_ranks(data, n=10, bits=bits)
    decoded[0] = 5

    assert unpack_ranks(data, n=10, bits=bits)[0] == 0


def test_pack_does_not_mutate_its_input() -> None:
    ranks = np.random.default_rng(1).permutation(1000)
    before = ranks.copy()

    pack_ranks(ranks)

    np.testing.assert_array_equal(ranks, before)


@pytest.mark.parametrize(
    ("ranks", "match"),
    [
        (np.array([[0, 1], [2, 3]]), "1-D"),
        (np.array([0.0, 1.0]), "integer"),
        (np.array([], dtype=np.int64), "at least one"),
        (np.array([0, 2]), r"0\.\.1"),
        (np.array([-1, 0]), r"0\.\.1"),
        (np.array([0, 2**64 - 1], dtype=np.uint64), r"0\.\.1"),
    ],
)
def test_pack_rejects_what_it_cannot_carry(ranks: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pack_ranks(ranks)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data": b"\x00", "n": 0, "bits": 1}, "n:"),
        ({"data": b"\x00", "n": 1, "bits": 0}, "bits:"),
        ({"data": b"\x00", "n": 1, "bits": 64}, "bits:"),
        ({"data": b"\x00\x00", "n": 4, "bits": 2}, "data:"),
        ({"data": b"", "n": 4, "bits": 2}, "data:"),
    ],
)
def test_unpack_rejects_inconsistent_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        unpack_ranks(**kwargs)  # type: ignore[arg-type]


def test_padding_check_sees_a_set_high_bit() -> None:
    data, bits = pack_ranks(np.array([2, 0, 1]))  # 6 of 8 bits used

    assert padding_is_zero(data, n=3, bits=bits)
    assert not padding_is_zero(bytes([data[0] | 0x80]), n=3, bits=bits)


@settings(max_examples=40, deadline=None)
@given(n=sizes, seed=seeds)
def test_a_permutation_has_no_problem(n: int, seed: int) -> None:
    assert permutation_problem(np.random.default_rng(seed).permutation(n), n=n) is None


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=2, max_value=5000), seed=seeds)
def test_a_repeated_entry_is_found(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ranks = rng.permutation(n)
    source, target = rng.choice(n, size=2, replace=False)
    ranks[target] = ranks[source]

    problem = permutation_problem(ranks, n=n)

    assert problem is not None
    assert f"value {ranks[source]} appears 2 times" in problem


@pytest.mark.parametrize(
    ("ranks", "n", "match"),
    [
        (np.array([0, 1, 2]), 4, "expected 4 entries"),
        (np.array([[0, 1]]), 2, "expected 2 entries"),
        (np.array([0.0, 1.0]), 2, "integers"),
        (np.array([0, 3, 1]), 3, "entry 1 is 3, outside 0..2"),
        (np.array([0, -1, 1]), 3, "entry 1 is -1, outside 0..2"),
        (np.array([1, 1, 1]), 3, "2 values missing"),
    ],
)
def test_permutation_problems_are_named(ranks: np.ndarray, n: int, match: str) -> None:
    problem = permutation_problem(ranks, n=n)

    assert problem is not None
    assert match in problem


# Sizes around the check's step of 32,768 entries and the unpacker's chunk of 65,536:
# a repeat or a gap may sit in another step than the value it collides with.
CHUNK_SIZES = [32_767, 32_768, 32_769, 65_536, 65_537, 2 * 65_536 + 3]
mutations = st.lists(
    st.tuples(st.sampled_from(["repeat", "out_of_range", "swap"]), seeds), max_size=3
)


def mutated(n: int, seed: int, changes: list[tuple[str, int]]) -> tuple[np.ndarray, int]:
    """A permutation of ``0..n-1`` after ``changes``; values stay below ``2**bits_for(n)``
    (all a stream can carry)."""
    bits = bits_for(n)
    ranks = np.random.default_rng(seed).permutation(n)
    for kind, change_seed in changes:
        rng = np.random.default_rng(change_seed)
        target = int(rng.integers(n))
        if kind == "repeat":
            ranks[target] = ranks[int(rng.integers(n))]
        elif kind == "out_of_range" and (1 << bits) > n:
            ranks[target] = int(rng.integers(n, 1 << bits))
        else:  # a swap keeps a permutation a permutation
            other = int(rng.integers(n))
            ranks[[target, other]] = ranks[[other, target]]
    return ranks, bits


@settings(max_examples=150, deadline=None)
@given(n=st.one_of(sizes, st.sampled_from(CHUNK_SIZES)), seed=seeds, changes=mutations)
def test_unpack_permutation_agrees_with_permutation_problem(
    n: int, seed: int, changes: list[tuple[str, int]]
) -> None:
    ranks, bits = mutated(n, seed, changes)

    decoded, problem = unpack_permutation(pack_values(ranks, bits), n=n)

    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, ranks)
    assert problem == permutation_problem(ranks, n=n)


@pytest.mark.parametrize("n", [3, 9, 65_537, 2 * 65_536 + 3])
def test_the_last_groups_padding_entries_are_not_counted(n: int) -> None:
    # n % 8 != 0: the last group's unused lanes unpack as 0. Were they marked, a
    # vector missing the value 0 (1 sent twice instead) would pass.
    ranks = np.arange(n)
    ranks[ranks == 0] = 1
    bits = bits_for(n)

    _, problem = unpack_permutation(pack_values(ranks, bits), n=n)

    assert problem is not None
    assert "value 1 appears 2 times" in problem


def test_unpack_permutation_ignores_set_padding_bits() -> None:
    # The stream's unused high bits are the codec's `bad_padding` check, not this one's.
    data, _ = pack_ranks(np.array([2, 0, 1]))  # 6 of 8 bits used

    decoded, problem = unpack_permutation(bytes([data[0] | 0xC0]), n=3)

    np.testing.assert_array_equal(decoded, [2, 0, 1])
    assert problem is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data": b"\x00", "n": 0}, "n:"),
        ({"data": b"", "n": 4}, "data:"),
        ({"data": b"\x00\x00", "n": 4}, "data:"),
    ],
)
def test_unpack_permutation_rejects_inconsistent_arguments(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        unpack_permutation(**kwargs)  # type: ignore[arg-type]
