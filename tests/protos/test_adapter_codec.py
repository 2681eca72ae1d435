"""Adapter replies (LoRA / FFA-LoRA): round trips and rejections."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedrank.errors import InvalidUpdate
from fedrank.protos import update_pb2
from fedrank.protos.serde import decode_adapter_update, encode_adapter_update
from fedrank.protos.updates import AdapterExpectation, UpdateHeader

HEADER = UpdateHeader(run_id="run-a", round=2, model_fingerprint="base+lora")
SHAPES = {"lin0.lora_A.weight": (2, 6), "lin0.lora_B.weight": (5, 2)}


def expectation(**changes: object) -> AdapterExpectation:
    fields: dict[str, object] = {
        "run_id": "run-a",
        "round": 2,
        "model_fingerprint": "base+lora",
        "tensors": SHAPES,
        "dtype": "float32",
        "max_bytes": 4096,
        "lora_rank": 2,
        "lora_alpha": 16.0,
        "factors": "AB",
    }
    fields.update(changes)
    return AdapterExpectation(**fields)  # type: ignore[arg-type]


def valid_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def valid_payload() -> bytes:
    return encode_adapter_update(HEADER, valid_tensors(), rank=2, alpha=16.0, factors="AB")


def mutate(change: Callable[[update_pb2.Update], None]) -> bytes:
    message = update_pb2.Update()
    message.ParseFromString(valid_payload())
    change(message)
    return message.SerializeToString(deterministic=True)


def tensor(message: update_pb2.Update, name: str) -> update_pb2.AdapterTensor:
    return next(item for item in message.adapter.tensors if item.name == name)


shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    shape_a=shapes,
    shape_b=shapes,
    factors=st.sampled_from(["AB", "B"]),
    rank=st.integers(1, 64),
    alpha=st.floats(min_value=1e-3, max_value=1e3),
    data=st.data(),
)
def test_round_trip(
    dtype: str,
    shape_a: tuple[int, ...],
    shape_b: tuple[int, ...],
    factors: str,
    rank: int,
    alpha: float,
    data: st.DataObject,
) -> None:
    wanted = {"b": shape_b} if factors == "B" else {"a": shape_a, "b": shape_b}
    tensors = {
        name: data.draw(
            hnp.arrays(dtype, shape, elements={"allow_nan": False, "allow_infinity": False})
        )
        for name, shape in wanted.items()
    }
    expect = expectation(
        tensors=wanted, dtype=dtype, lora_rank=rank, lora_alpha=alpha, factors=factors
    )

    payload = encode_adapter_update(HEADER, tensors, rank=rank, alpha=alpha, factors=factors)  # type: ignore[arg-type]
    decoded = decode_adapter_update(payload, expect=expect)

    assert (decoded.lora_rank, decoded.lora_alpha, decoded.factors) == (rank, alpha, factors)
    assert list(decoded.tensors) == list(wanted)
    for name, values in tensors.items():
        assert decoded.tensors[name].dtype == np.dtype(dtype)
        assert decoded.tensors[name].flags.writeable
        np.testing.assert_array_equal(decoded.tensors[name], values)


def test_big_endian_input_arrives_in_native_order() -> None:
    tensors = {name: values.astype(">f4") for name, values in valid_tensors().items()}

    payload = encode_adapter_update(HEADER, tensors, rank=2, alpha=16.0, factors="AB")
    decoded = decode_adapter_update(payload, expect=expectation())

    assert payload == valid_payload()
    for name, values in valid_tensors().items():
        assert decoded.tensors[name].dtype == np.dtype(np.float32)
        np.testing.assert_array_equal(decoded.tensors[name], values)


@pytest.mark.parametrize(
    ("tensors", "kwargs", "match"),
    [
        ({"a": np.array([1, 2])}, {}, "dtype"),
        ({"a": np.array([1.0, np.nan], dtype=np.float32)}, {}, "NaN"),
        ({}, {}, "at least one"),
        ({"a": np.zeros(2, np.float32)}, {"rank": 0}, "rank"),
        ({"a": np.zeros(2, np.float32)}, {"alpha": float("inf")}, "alpha"),
        ({"a": np.zeros(2, np.float32)}, {"factors": "A"}, "factors"),
    ],
)
def test_encoder_refuses_bad_input(
    tensors: dict[str, np.ndarray], kwargs: dict[str, object], match: str
) -> None:
    arguments: dict[str, object] = {"rank": 2, "alpha": 16.0, "factors": "AB", **kwargs}
    with pytest.raises(ValueError, match=match):
        encode_adapter_update(HEADER, tensors, **arguments)  # type: ignore[arg-type]


def set_data(name: str, values: np.ndarray) -> Callable[[update_pb2.Update], None]:
    def change(message: update_pb2.Update) -> None:
        tensor(message, name).data = values.astype("<f4").tobytes()

    return change


def with_nan() -> np.ndarray:
    values = valid_tensors()["lin0.lora_B.weight"].copy()
    values[1, 1] = np.nan
    values[0, 0] = -np.inf
    return values


@pytest.mark.parametrize(
    ("change", "expect_changes", "reason", "words"),
    [
        (None, {"round": 3}, "round", ["expected 3, got 2"]),
        (None, {"run_id": "x"}, "run_id", ["'x'"]),
        (None, {"model_fingerprint": "other"}, "fingerprint", ["'other'"]),
        (None, {"schema_version": 9}, "schema_version", ["expected 9"]),
        (None, {"max_bytes": 10}, "too_large", ["limit is 10"]),
        (None, {"lora_rank": 4}, "adapter_config", ["LoRA rank", "4", "2"]),
        (None, {"lora_alpha": 8.0}, "adapter_config", ["LoRA alpha"]),
        (None, {"factors": "B"}, "adapter_config", ["factors", "'B'", "'AB'"]),
        (
            lambda m: m.adapter.__setattr__("factors", 7),
            {},
            "adapter_config",
            ["enum value 7"],
        ),
        (None, {"tensors": {**SHAPES, "lin1.lora_A.weight": (2, 2)}}, "missing_tensor", ["lin1"]),
        (
            None,
            {"tensors": {"lin0.lora_B.weight": (5, 2)}, "factors": "AB"},
            "extra_tensor",
            ["lin0.lora_A.weight"],
        ),
        (
            None,
            {"tensors": {**SHAPES, "lin0.lora_A.weight": (6, 2)}},
            "bad_shape",
            ["lin0.lora_A.weight", "(6, 2)", "(2, 6)"],
        ),
        (None, {"dtype": "float64"}, "bad_dtype", ["expected float64, got float32"]),
        (
            lambda m: tensor(m, "lin0.lora_B.weight").__setattr__("dtype", 12),
            {},
            "bad_dtype",
            ["got enum value 12"],
        ),
        (
            lambda m: tensor(m, "lin0.lora_A.weight").__setattr__(
                "data", tensor(m, "lin0.lora_A.weight").data[:-2]
            ),
            {},
            "bad_length",
            ["48 data bytes, got 46"],
        ),
        (set_data("lin0.lora_B.weight", with_nan()), {}, "non_finite", ["2 entries"]),
        (
            lambda m: m.adapter.tensors.append(tensor(m, "lin0.lora_A.weight")),
            {},
            "duplicate_tensor",
            ["lin0.lora_A.weight"],
        ),
        (lambda m: m.ranking.layers.add(name="x"), {}, "wrong_kind", ["got ranking"]),
        (lambda m: m.ClearField("header"), {}, "malformed", ["no header"]),
    ],
)
def test_each_rejection_names_its_reason(
    change: Callable[[update_pb2.Update], None] | None,
    expect_changes: dict[str, object],
    reason: str,
    words: list[str],
) -> None:
    payload = valid_payload() if change is None else mutate(change)

    with pytest.raises(InvalidUpdate) as caught:
        decode_adapter_update(payload, expect=expectation(**expect_changes))

    assert caught.value.reason == reason
    for word in words:
        assert word in str(caught.value)


def test_ffa_lora_sends_b_only() -> None:
    only_b = {"lin0.lora_B.weight": valid_tensors()["lin0.lora_B.weight"]}
    expect = expectation(tensors={"lin0.lora_B.weight": (5, 2)}, factors="B")

    decoded = decode_adapter_update(
        encode_adapter_update(HEADER, only_b, rank=2, alpha=16.0, factors="B"), expect=expect
    )

    assert decoded.factors == "B"
    assert list(decoded.tensors) == ["lin0.lora_B.weight"]
