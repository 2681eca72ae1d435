"""Ranking replies: round trips, and every reason a reply is rejected."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.errors import InvalidUpdate
from fedrank.protos import update_pb2
from fedrank.protos.packing import bits_for, pack_ranks
from fedrank.protos.serde import decode_ranking_update, encode_ranking_update, ranking_size_limit
from fedrank.protos.updates import RankingExpectation, UpdateHeader, model_fingerprint

FINGERPRINT = model_fingerprint(architecture="mlp-tiny", seed=7, k=0.5)
SIZES = {"fc1.weight": 24, "fc2.weight": 8, "fc3.weight": 1}
HEADER = UpdateHeader(run_id="run-a", round=4, model_fingerprint=FINGERPRINT)


def expectation(**changes: object) -> RankingExpectation:
    fields: dict[str, object] = {
        "run_id": "run-a",
        "round": 4,
        "model_fingerprint": FINGERPRINT,
        "layer_sizes": SIZES,
        "max_bytes": ranking_size_limit(SIZES),
    }
    fields.update(changes)
    return RankingExpectation(**fields)  # type: ignore[arg-type]


def valid_layers(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.permutation(n) for name, n in SIZES.items()}


def valid_message() -> update_pb2.Update:
    message = update_pb2.Update()
    message.ParseFromString(encode_ranking_update(HEADER, valid_layers()))
    return message


def rejection(payload: bytes, expect: RankingExpectation | None = None) -> InvalidUpdate:
    with pytest.raises(InvalidUpdate) as caught:
        decode_ranking_update(payload, expect=expect or expectation())
    return caught.value


names = st.text(min_size=1, max_size=12)
layer_sizes = st.dictionaries(
    names, st.one_of(st.sampled_from([1, 2, 3, 4, 5, 63, 64, 65, 255, 256, 257])), min_size=1
)


@settings(max_examples=60, deadline=None)
@given(
    sizes=layer_sizes,
    seed=st.integers(0, 2**32 - 1),
    run_id=st.text(min_size=1, max_size=40),
    round_=st.integers(0, 2**64 - 1),
)
def test_round_trip(sizes: dict[str, int], seed: int, run_id: str, round_: int) -> None:
    rng = np.random.default_rng(seed)
    layers = {name: rng.permutation(n) for name, n in sizes.items()}
    header = UpdateHeader(run_id=run_id, round=round_, model_fingerprint=FINGERPRINT)
    expect = RankingExpectation(
        run_id=run_id,
        round=round_,
        model_fingerprint=FINGERPRINT,
        layer_sizes=sizes,
        max_bytes=ranking_size_limit(sizes),
    )

    decoded = decode_ranking_update(encode_ranking_update(header, layers), expect=expect)

    assert list(decoded) == list(sizes)
    for name, ranks in layers.items():
        np.testing.assert_array_equal(decoded[name], ranks)


def test_size_limit_admits_long_ids() -> None:
    run_id = "r" * 500
    header = UpdateHeader(run_id=run_id, round=2**64 - 1, model_fingerprint="f" * 500)
    expect = expectation(run_id=run_id, round=2**64 - 1, model_fingerprint="f" * 500)

    payload = encode_ranking_update(header, valid_layers())

    assert len(decode_ranking_update(payload, expect=expect)) == len(SIZES)


def test_encoder_rejects_what_it_cannot_pack() -> None:
    with pytest.raises(ValueError, match=r"layers\['fc2.weight'\]"):
        encode_ranking_update(HEADER, {**valid_layers(), "fc2.weight": np.array([0, 5])})
    with pytest.raises(ValueError, match="at least one layer"):
        encode_ranking_update(HEADER, {})
    with pytest.raises(ValueError, match="non-empty"):
        encode_ranking_update(HEADER, {"": np.arange(3)})


def mutate(change: Callable[[update_pb2.Update], None]) -> bytes:
    message = valid_message()
    change(message)
    return message.SerializeToString(deterministic=True)


def layer(message: update_pb2.Update, name: str) -> update_pb2.LayerRanking:
    return next(item for item in message.ranking.layers if item.name == name)


def set_packed(name: str, ranks: np.ndarray) -> Callable[[update_pb2.Update], None]:
    def change(message: update_pb2.Update) -> None:
        layer(message, name).packed = pack_ranks(ranks)[0]

    return change


@pytest.mark.parametrize(
    ("payload_change", "expect_changes", "reason", "words"),
    [
        (None, {"schema_version": 2}, "schema_version", ["expected 2, got 1"]),
        (None, {"run_id": "run-b"}, "run_id", ["'run-b'", "'run-a'"]),
        (None, {"round": 5}, "round", ["expected 5, got 4"]),
        (None, {"model_fingerprint": "other"}, "fingerprint", ["'other'"]),
        (None, {"max_bytes": 20}, "too_large", ["limit is 20"]),
        (
            None,
            {"layer_sizes": {**SIZES, "fc4.weight": 3}},
            "missing_layer",
            ["fc4.weight"],
        ),
        (None, {"layer_sizes": {"fc1.weight": 24, "fc2.weight": 8}}, "extra_layer", ["fc3.weight"]),
        (None, {"layer_sizes": {**SIZES, "fc2.weight": 9}}, "bad_length", ["fc2.weight", "9", "8"]),
        (
            lambda m: layer(m, "fc1.weight").__setattr__("bits_per_index", 6),
            {},
            "bad_bits",
            ["fc1.weight", "5 bits", "got 6"],
        ),
        (
            lambda m: layer(m, "fc1.weight").__setattr__(
                "packed", layer(m, "fc1.weight").packed[:-1]
            ),
            {},
            "bad_length",
            ["fc1.weight", "15 packed bytes, got 14"],
        ),
        (
            lambda m: layer(m, "fc3.weight").__setattr__("packed", b"\x02"),
            {},
            "bad_padding",
            ["fc3.weight"],
        ),
        (
            set_packed("fc2.weight", np.array([0, 1, 2, 3, 4, 5, 6, 6])),
            {},
            "not_permutation",
            ["fc2.weight", "value 6 appears 2 times"],
        ),
        (
            lambda m: m.ranking.layers.append(layer(m, "fc3.weight")),
            {},
            "duplicate_layer",
            ["fc3.weight"],
        ),
        (lambda m: m.ClearField("header"), {}, "malformed", ["no header"]),
        (lambda m: m.ClearField("ranking"), {}, "wrong_kind", ["no body"]),
        (
            lambda m: m.adapter.tensors.add(name="x"),
            {},
            "wrong_kind",
            ["expected a ranking update, got adapter"],
        ),
    ],
)
def test_each_rejection_names_its_reason(
    payload_change: Callable[[update_pb2.Update], None] | None,
    expect_changes: dict[str, object],
    reason: str,
    words: list[str],
) -> None:
    payload = (
        encode_ranking_update(HEADER, valid_layers())
        if payload_change is None
        else mutate(payload_change)
    )

    error = rejection(payload, expectation(**expect_changes))

    assert error.reason == reason
    for word in words:
        assert word in str(error)


def test_out_of_range_entry_is_not_a_permutation() -> None:
    # 5 bits carry 0..31 but fc1 has 24 entries: 30 is out of range.
    ranks = np.arange(24)
    ranks[3] = 30
    stream = 0
    for index, value in enumerate(ranks.tolist()):
        stream |= value << (index * bits_for(24))

    def change(message: update_pb2.Update) -> None:
        layer(message, "fc1.weight").packed = stream.to_bytes(15, "little")

    error = rejection(mutate(change))

    assert error.reason == "not_permutation"
    assert "entry 3 is 30, outside 0..23" in str(error)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xff\xff", "malformed"),
        (b"\x0a\x05ab", "malformed"),
        (b"", "malformed"),
        ("not bytes", "malformed"),
    ],
)
def test_garbage_is_malformed(payload: bytes, reason: str) -> None:
    assert rejection(payload).reason == reason


def test_unknown_and_repeated_fields_are_not_canonical() -> None:
    valid = encode_ranking_update(HEADER, valid_layers())
    unknown_field = valid + b"\x78\x01"  # field 15, varint 1
    header_twice = valid + valid[: 2 + valid[1]]  # the header field again

    assert rejection(unknown_field).reason == "non_canonical"
    assert rejection(header_twice).reason == "non_canonical"


def test_bytes_like_payloads_are_accepted() -> None:
    payload = encode_ranking_update(HEADER, valid_layers())

    for view in (bytearray(payload), memoryview(payload)):
        assert set(decode_ranking_update(view, expect=expectation())) == set(SIZES)  # type: ignore[arg-type]
