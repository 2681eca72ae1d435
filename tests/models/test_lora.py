"""LoRA wrapping of the tiny BERT: spec validation, stable names, get/set, FFA-LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrank.errors import ConfigError, InvalidUpdate
from fedrank.models import lora
from fedrank.models.lora import (
    LoraSpec,
    adapter_tensors,
    build_lora_model,
    set_adapter_tensors,
    trainable_tensors,
)
from fedrank.strategies import lora_aggregation

TINY = LoraSpec(base="tiny-bert", r=4, lora_alpha=8)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("base", {"base": ""}),
        ("r", {"r": 0}),
        ("lora_alpha", {"lora_alpha": 0}),
        ("lora_dropout", {"lora_dropout": 1.0}),
        ("target_modules", {"target_modules": ()}),
        ("target_modules", {"target_modules": ("query", "")}),
        ("mode", {"mode": "dora"}),
        ("pooling", {"pooling": "max"}),
        ("num_labels", {"num_labels": 1}),
    ],
)
def test_spec_validation_names_the_field(field: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as err:
        LoraSpec(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_unknown_target_module_names_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        build_lora_model(LoraSpec(base="tiny-bert", target_modules=("no_such_layer",)))
    assert err.value.field == "target_modules"


def test_adapter_names_and_shapes_are_stable() -> None:
    tensors = adapter_tensors(build_lora_model(TINY))

    expected = {
        f"bert.encoder.layer.{i}.attention.self.{m}.lora_{f}"
        for i in range(2)
        for m in ("query", "value")
        for f in "AB"
    } | {"classifier.weight", "classifier.bias"}
    assert set(tensors) == expected
    assert tensors["bert.encoder.layer.0.attention.self.query.lora_A"].shape == (4, 32)
    assert tensors["bert.encoder.layer.0.attention.self.query.lora_B"].shape == (32, 4)
    assert tensors["classifier.weight"].shape == (2, 32)
    assert all(v.dtype == np.float32 for v in tensors.values())
    assert lora.LORA_A_SUFFIX == lora_aggregation.LORA_A_SUFFIX
    assert lora.LORA_B_SUFFIX == lora_aggregation.LORA_B_SUFFIX


def test_initial_adapter_depends_only_on_the_seed() -> None:
    first = adapter_tensors(build_lora_model(TINY))
    again = adapter_tensors(build_lora_model(TINY))
    other = adapter_tensors(build_lora_model(LoraSpec(base="tiny-bert", r=4, init_seed=1)))

    a_name = "bert.encoder.layer.1.attention.self.value.lora_A"
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first[a_name], other[a_name])
    assert not np.any(first["bert.encoder.layer.1.attention.self.value.lora_B"])
    bound = 1.0 / np.sqrt(32)
    assert np.abs(first[a_name]).max() <= bound


def test_models_from_the_cache_are_independent() -> None:
    model = build_lora_model(TINY)
    name = "bert.encoder.layer.0.attention.self.query.lora_B"
    set_adapter_tensors(model, {name: np.ones((32, 4), dtype=np.float32)})

    fresh = adapter_tensors(build_lora_model(TINY))

    assert not np.any(fresh[name])


def test_set_then_get_round_trips_and_changes_the_output() -> None:
    model = build_lora_model(TINY)
    rng = np.random.default_rng(0)
    new = {
        k: rng.normal(size=v.shape).astype(np.float32) for k, v in adapter_tensors(model).items()
    }
    ids = torch.randint(1000, 2000, (3, 8), generator=torch.Generator().manual_seed(0))
    before = model(input_ids=ids).logits.detach()

    set_adapter_tensors(model, new)

    got = adapter_tensors(model)
    for name in new:
        np.testing.assert_array_equal(got[name], new[name])
    assert not torch.allclose(model(input_ids=ids).logits, before)


def test_ffa_freezes_a_and_sends_only_b_and_the_head() -> None:
    model = build_lora_model(LoraSpec(base="tiny-bert", r=4, mode="ffa"))

    sent = trainable_tensors(model)

    assert not any(n.endswith(".lora_A") for n in sent)
    assert sum(n.endswith(".lora_B") for n in sent) == 4
    assert {"classifier.weight", "classifier.bias"} <= set(sent)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_B." in n or ".modules_to_save." in n for n in trainable)


def test_frozen_head_does_not_travel() -> None:
    model = build_lora_model(LoraSpec(base="tiny-bert", r=4, train_head=False))
    assert not any(n.startswith("classifier") for n in trainable_tensors(model))


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        ({"nope.lora_A": np.zeros((4, 32), dtype=np.float32)}, "unknown_tensor"),
        ({"classifier.bias": np.zeros(3, dtype=np.float32)}, "wrong_shape"),
        ({"classifier.bias": np.array([np.nan, 0.0], dtype=np.float32)}, "not_finite"),
    ],
)
def test_bad_tensors_are_rejected_and_nothing_is_written(
    tensors: dict[str, np.ndarray], reason: str
) -> None:
    model = build_lora_model(TINY)
    before = adapter_tensors(model)
    good = {"classifier.weight": np.ones((2, 32), dtype=np.float32)}

    with pytest.raises(InvalidUpdate) as err:
        set_adapter_tensors(model, good | tensors)

    assert err.value.reason == reason
    np.testing.assert_array_equal(
        adapter_tensors(model)["classifier.weight"], before["classifier.weight"]
    )
