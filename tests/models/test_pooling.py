"""Mean pooling: the masked mean itself, and the mean-pooled classifier under PEFT and Opacus."""

from __future__ import annotations

import numpy as np
import torch

from fedrank.data.text import TokenizedText
from fedrank.lora_training import DpSgdConfig, train_lora
from fedrank.models.evaluation import evaluate_lora
from fedrank.models.lora import LoraSpec, adapter_tensors, build_lora_model, load_base_model
from fedrank.models.pooling import MeanPooledClassifier, masked_mean

MEAN = LoraSpec(base="tiny-bert", r=4, lora_alpha=8, pooling="mean")
CLS = LoraSpec(base="tiny-bert", r=4, lora_alpha=8, pooling="cls")


def test_masked_mean_averages_only_the_unmasked_positions() -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1]])

    got = masked_mean(hidden, mask)

    for row in range(3):
        keep = mask[row].bool()
        torch.testing.assert_close(got[row], hidden[row, keep].mean(dim=0))


def test_masked_mean_ignores_what_lies_under_the_mask_and_never_gives_nan() -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 6, 3, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    changed = hidden.clone()
    changed[:, 3:] = 1e6

    got = masked_mean(changed, mask)

    torch.testing.assert_close(got[0], masked_mean(hidden, mask)[0])
    torch.testing.assert_close(got[1], torch.zeros(3))


def test_the_spec_picks_the_base_class() -> None:
    assert isinstance(load_base_model(MEAN), MeanPooledClassifier)
    assert not isinstance(load_base_model(CLS), MeanPooledClassifier)


def test_mean_pooling_keeps_the_tensor_names_and_shapes() -> None:
    mean, cls = adapter_tensors(build_lora_model(MEAN)), adapter_tensors(build_lora_model(CLS))

    assert {k: v.shape for k, v in mean.items()} == {k: v.shape for k, v in cls.items()}
    # Same seed, same initial adapter: only what the head reads differs.
    for name, value in cls.items():
        np.testing.assert_array_equal(mean[name], value)


def test_padding_does_not_change_the_mean_pooled_logits() -> None:
    model = build_lora_model(MEAN)
    ids = torch.randint(1000, 3000, (4, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[:, 6:] = 0
    other = ids.clone()
    other[:, 6:] = 0

    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = model(input_ids=other, attention_mask=mask).logits
        c = model(input_ids=ids[:, :6], attention_mask=mask[:, :6]).logits

    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def separable(n: int, seed: int, length: int = 8) -> TokenizedText:
    """Class 1 snippets use tokens 3000-3009, class 0 tokens 4000-4009, then padding."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    base = np.where(labels == 1, 3000, 4000)[:, None]
    ids = base + rng.integers(0, 10, size=(n, length))
    mask = np.ones((n, length), dtype=np.int64)
    mask[:, length // 2 :] = rng.integers(0, 2, size=(n, 1))
    return TokenizedText(torch.as_tensor(ids), torch.as_tensor(mask), torch.as_tensor(labels))


def test_one_dp_step_of_the_mean_pooled_model_equals_the_plain_step() -> None:
    # Opacus must find per-example gradients for every trained module (LoRA A, B and
    # the head); the pooling has no parameters. Rate-1 sampling, no clipping, no noise.
    data = separable(24, 0)
    plain, private = build_lora_model(MEAN), build_lora_model(MEAN)
    dp = DpSgdConfig(noise_multiplier=1e-12, max_grad_norm=1e3)

    expected = train_lora(plain, data, epochs=1, lr=0.5, batch_size=24, seed=0, optimizer="sgd")
    got = train_lora(private, data, epochs=1, lr=0.5, batch_size=24, seed=0, optimizer="sgd", dp=dp)

    assert got.privacy is not None
    for name, value in expected.tensors.items():
        np.testing.assert_allclose(got.tensors[name], value, rtol=1e-4, atol=1e-6)


def test_dp_training_of_the_mean_pooled_model_changes_and_helps() -> None:
    model = build_lora_model(MEAN)
    train, test = separable(256, 1), separable(256, 2)
    untrained, _ = evaluate_lora(model, test)
    before = adapter_tensors(model)
    dp = DpSgdConfig(noise_multiplier=0.5, max_grad_norm=1.0, physical_batch_size=32)

    result = train_lora(model, train, epochs=2, lr=5e-2, batch_size=64, seed=0, dp=dp)

    accuracy, _ = evaluate_lora(model, test)
    assert accuracy > untrained + 0.3
    assert all(not np.array_equal(v, before[k]) for k, v in result.tensors.items())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
