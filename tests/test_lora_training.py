"""Local LoRA training, with and without Opacus DP-SGD, on the tiny BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrank.data.text import TokenizedText
from fedrank.errors import ConfigError, PrivacyBudgetExhausted
from fedrank.lora_training import (
    DpSgdConfig,
    cumulative_epsilon,
    evaluate_lora,
    noise_multiplier_for_budget,
    train_lora,
)
from fedrank.models.lora import LoraSpec, adapter_tensors, build_lora_model
from fedrank.privacy.accountant import history_from_array, history_to_array
from fedrank.privacy.plan import steps_per_epoch

TINY = LoraSpec(base="tiny-bert", r=4, lora_alpha=8)


def separable(n: int, seed: int, length: int = 8) -> TokenizedText:
    """Class 1 opens with token 3000/3001, class 0 with 4000/4001; the rest is noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    ids = rng.integers(5000, 5100, size=(n, length))
    ids[:, 0] = np.where(labels == 1, 3000, 4000) + rng.integers(0, 2, size=n)
    return TokenizedText(
        torch.as_tensor(ids), torch.ones(n, length, dtype=torch.int64), torch.as_tensor(labels)
    )


TRAIN, TEST = separable(256, 0), separable(256, 1)


def test_plain_training_learns_and_returns_what_travels() -> None:
    model = build_lora_model(TINY)
    untrained, _ = evaluate_lora(model, TEST)

    result = train_lora(model, TRAIN, epochs=2, lr=5e-2, batch_size=32, seed=0)

    accuracy, _ = evaluate_lora(model, TEST)
    assert accuracy > untrained + 0.3
    assert result.privacy is None
    assert result.accountant_state == ()
    assert result.metrics["num_examples"] == 256
    assert result.metrics["steps"] == 2 * steps_per_epoch(num_examples=256, batch_size=32)
    assert set(result.tensors) == set(adapter_tensors(model))
    assert not model.training


@pytest.mark.parametrize("train_head", [True, False])
def test_dp_trained_adapters_change_and_help(train_head: bool) -> None:
    # opacus#820 reports PEFT LoRA adapters silently corrupted by Opacus: check that
    # the DP-trained adapter moved and beats the untrained one on held-out data.
    spec = LoraSpec(base="tiny-bert", r=4, lora_alpha=8, train_head=train_head)
    model = build_lora_model(spec)
    untrained, _ = evaluate_lora(model, TEST)
    dp = DpSgdConfig(noise_multiplier=0.5, max_grad_norm=1.0, physical_batch_size=32)

    result = train_lora(model, TRAIN, epochs=2, lr=5e-2, batch_size=64, seed=0, dp=dp)

    accuracy, _ = evaluate_lora(model, TEST)
    assert accuracy > untrained + (0.3 if train_head else 0.1)
    b_norms = [np.linalg.norm(v) for k, v in result.tensors.items() if k.endswith(".lora_B")]
    assert len(b_norms) == 4
    assert min(b_norms) > 0  # B starts at zero
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_the_head_can_learn_at_its_own_rate() -> None:
    moved = {}
    for head_lr in (None, 1e-12):
        model = build_lora_model(TINY)
        before = adapter_tensors(model)
        result = train_lora(model, TRAIN, epochs=1, lr=5e-2, head_lr=head_lr, batch_size=64, seed=0)
        moved[head_lr] = {k: float(np.abs(v - before[k]).max()) for k, v in result.tensors.items()}

    assert moved[None]["classifier.weight"] > 1e-3
    assert moved[1e-12]["classifier.weight"] < 1e-9
    # The adapter trains at lr either way (the same first step, then the head differs).
    assert moved[1e-12]["bert.encoder.layer.0.attention.self.query.lora_B"] > 1e-3


def test_dp_gradient_equals_the_plain_gradient_without_clipping_or_noise() -> None:
    # Whole-batch Poisson sampling (rate 1), a clip norm no gradient reaches and
    # negligible noise: one DP-SGD step must be exactly one plain SGD step.
    data = TRAIN.subset(range(24))
    plain, private = build_lora_model(TINY), build_lora_model(TINY)
    dp = DpSgdConfig(noise_multiplier=1e-12, max_grad_norm=1e3)

    expected = train_lora(plain, data, epochs=1, lr=0.5, batch_size=24, seed=0, optimizer="sgd")
    got = train_lora(private, data, epochs=1, lr=0.5, batch_size=24, seed=0, optimizer="sgd", dp=dp)

    assert got.privacy is not None
    assert got.privacy["sample_rate"] == 1.0
    for name, value in expected.tensors.items():
        np.testing.assert_allclose(got.tensors[name], value, rtol=1e-4, atol=1e-6)


def test_dp_step_is_clipped_over_all_trained_tensors_together() -> None:
    data = TRAIN.subset(range(24))
    model = build_lora_model(TINY)
    before = adapter_tensors(model)
    dp = DpSgdConfig(noise_multiplier=1e-12, max_grad_norm=1e-3)

    result = train_lora(
        model, data, epochs=1, lr=1.0, batch_size=24, seed=0, optimizer="sgd", dp=dp
    )

    moved = np.sqrt(sum(np.sum((result.tensors[k] - before[k]) ** 2) for k in result.tensors))
    # The mean of per-example gradients each clipped to C has norm at most C.
    assert 0 < moved <= 1e-3 * (1 + 1e-4)


def test_epsilon_accumulates_across_rounds() -> None:
    dp = DpSgdConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    first = train_lora(
        build_lora_model(TINY), TRAIN, epochs=1, lr=1e-2, batch_size=64, seed=0, dp=dp
    )
    state = history_from_array(history_to_array(first.accountant_state))

    second = train_lora(
        build_lora_model(TINY),
        TRAIN,
        epochs=1,
        lr=1e-2,
        batch_size=64,
        seed=1,
        dp=dp,
        accountant_state=state,
    )

    assert first.privacy is not None
    assert second.privacy is not None
    assert first.accountant_state == ((1.0, 0.25, 4),)
    assert second.accountant_state == ((1.0, 0.25, 8),)
    assert second.privacy["steps"] == 4
    one_round = cumulative_epsilon(((1.0, 0.25, 4),), delta=1e-5)
    assert first.privacy["epsilon"] == pytest.approx(one_round)
    assert second.privacy["epsilon"] == pytest.approx(
        cumulative_epsilon(((1.0, 0.25, 8),), delta=1e-5)
    )
    assert second.privacy["epsilon"] > one_round


def test_a_round_over_budget_is_refused_before_training() -> None:
    model = build_lora_model(TINY)
    before = adapter_tensors(model)
    dp = DpSgdConfig(noise_multiplier=1.0, max_grad_norm=1.0, epsilon_budget=1.0)

    with pytest.raises(PrivacyBudgetExhausted, match="budget"):
        train_lora(model, TRAIN, epochs=1, lr=1e-2, batch_size=64, seed=0, dp=dp)

    after = adapter_tensors(model)
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_dp_training_is_reproducible_from_its_seed() -> None:
    dp = DpSgdConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    runs = [
        train_lora(build_lora_model(TINY), TRAIN, epochs=1, lr=1e-2, batch_size=64, seed=s, dp=dp)
        for s in (3, 3, 4)
    ]
    name = "classifier.weight"
    np.testing.assert_array_equal(runs[0].tensors[name], runs[1].tensors[name])
    assert not np.array_equal(runs[0].tensors[name], runs[2].tensors[name])


def test_small_poisson_batches_survive_empty_batches() -> None:
    # 20 records at rate 0.1: about one step in eight samples nobody.
    dp = DpSgdConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    result = train_lora(
        build_lora_model(TINY),
        TRAIN.subset(range(20)),
        epochs=3,
        lr=1e-2,
        batch_size=2,
        seed=0,
        dp=dp,
    )
    assert result.privacy is not None
    assert result.privacy["steps"] == 30


def test_noise_multiplier_for_budget_spends_the_target() -> None:
    sigma = noise_multiplier_for_budget(
        target_epsilon=3.0, delta=1e-5, sample_rate=0.01, steps=1000
    )

    spent = cumulative_epsilon(((sigma, 0.01, 1000),), delta=1e-5)
    assert 2.98 <= spent <= 3.0
    assert cumulative_epsilon(((sigma * 0.97, 0.01, 1000),), delta=1e-5) > 3.0


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("noise_multiplier", {"noise_multiplier": 0.0}),
        ("max_grad_norm", {"max_grad_norm": -1.0}),
        ("delta", {"delta": 1.0}),
        ("physical_batch_size", {"physical_batch_size": 0}),
        ("accountant", {"accountant": "gdp"}),
        ("epsilon_budget", {"epsilon_budget": 0.0}),
    ],
)
def test_dp_config_validation_names_the_field(field: str, kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    with pytest.raises(ConfigError) as err:
        DpSgdConfig(**(base | kwargs))  # type: ignore[arg-type]
    assert err.value.field == field


def test_training_arguments_are_validated() -> None:
    model = build_lora_model(TINY)
    with pytest.raises(ConfigError, match="epochs"):
        train_lora(model, TRAIN, epochs=0, lr=1e-2, batch_size=8, seed=0)
    with pytest.raises(ConfigError, match="optimizer"):
        train_lora(model, TRAIN, epochs=1, lr=1e-2, batch_size=8, seed=0, optimizer="lion")  # type: ignore[arg-type]
