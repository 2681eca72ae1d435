"""The dataclasses of fedrank.protos.updates and the model fingerprint."""

from __future__ import annotations

import math

import pytest

from fedrank.protos.updates import (
    AdapterExpectation,
    RankingExpectation,
    UpdateHeader,
    model_fingerprint,
)


def test_fingerprint_is_canonical_and_sensitive() -> None:
    first = model_fingerprint(architecture="mlp", seed=0, k=0.5)

    assert first == model_fingerprint(k=0.5, seed=0, architecture="mlp")
    assert len(first) == 32
    int(first, 16)
    assert first != model_fingerprint(architecture="mlp", seed=1, k=0.5)
    assert first != model_fingerprint(architecture="mlp", seed=0, k=0.25)
    assert first != model_fingerprint(architecture="mlp", seed="0", k=0.5)


@pytest.mark.parametrize("parts", [{}, {"k": math.nan}, {"model": object()}])
def test_fingerprint_refuses_what_has_no_canonical_form(parts: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="parts"):
        model_fingerprint(**parts)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"run_id": ""}, "run_id"),
        ({"round": -1}, "round"),
        ({"model_fingerprint": ""}, "model_fingerprint"),
        ({"schema_version": 0}, "schema_version"),
    ],
)
def test_header_names_the_bad_field(changes: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {"run_id": "r", "round": 0, "model_fingerprint": "f", **changes}
    with pytest.raises(ValueError, match=f"^{field}:"):
        UpdateHeader(**fields)  # type: ignore[arg-type]


def ranking(**changes: object) -> RankingExpectation:
    fields: dict[str, object] = {
        "run_id": "r",
        "round": 0,
        "model_fingerprint": "f",
        "layer_sizes": {"a": 3},
        "max_bytes": 100,
        **changes,
    }
    return RankingExpectation(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"layer_sizes": {}}, "layer_sizes"),
        ({"layer_sizes": {"a": 0}}, r"layer_sizes\['a'\]"),
        ({"layer_sizes": {"": 2}}, "layer_sizes"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"round": 1.5}, "round"),
    ],
)
def test_ranking_expectation_names_the_bad_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        ranking(**changes)


def test_expectation_keeps_its_own_copy_of_the_sizes() -> None:
    sizes = {"a": 3}
    expect = ranking(layer_sizes=sizes)

    sizes["b"] = 4

    assert dict(expect.layer_sizes) == {"a": 3}
    with pytest.raises(TypeError):
        expect.layer_sizes["c"] = 5  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tensors": {}}, "tensors"),
        ({"tensors": {"a": (2, -1)}}, r"tensors\['a'\]"),
        ({"dtype": "int8"}, "dtype"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_alpha": 0.0}, "lora_alpha"),
        ({"factors": "A"}, "factors"),
    ],
)
def test_adapter_expectation_names_the_bad_field(changes: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {
        "run_id": "r",
        "round": 0,
        "model_fingerprint": "f",
        "tensors": {"a": (2, 3)},
        "dtype": "float32",
        "max_bytes": 100,
        "lora_rank": 2,
        "lora_alpha": 4.0,
        "factors": "AB",
        **changes,
    }
    with pytest.raises(ValueError, match=f"^{field}:"):
        AdapterExpectation(**fields)  # type: ignore[arg-type]
