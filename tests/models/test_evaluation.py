"""Logits over the non-padding width, and length-sorted evaluation, change nothing."""

from __future__ import annotations

import torch

from fedrank.data.text import load_rotten_tomatoes, tokenize
from fedrank.models.evaluation import classifier_logits, evaluate_lora
from fedrank.models.lora import LoraSpec, build_lora_model, load_tokenizer

SPEC = LoraSpec(base="tiny-bert", r=4, lora_alpha=8)


def test_padding_columns_are_dropped_without_changing_the_logits() -> None:
    model = build_lora_model(SPEC)
    data = tokenize(load_rotten_tomatoes("test").subset(range(8)), load_tokenizer(), max_length=96)
    width = int(data.attention_mask.sum(dim=1).max())

    with torch.no_grad():
        trimmed = classifier_logits(model, data.input_ids, data.attention_mask)
        full = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits

    assert width < 96  # the batch has padding columns to drop
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)


def test_evaluation_does_not_depend_on_the_batch_size() -> None:
    model = build_lora_model(SPEC)
    data = tokenize(load_rotten_tomatoes("test").subset(range(64)), load_tokenizer(), max_length=48)

    one_batch = evaluate_lora(model, data, batch_size=64)
    small_batches = evaluate_lora(model, data, batch_size=5)

    assert one_batch[0] == small_batches[0]
    assert abs(one_batch[1] - small_batches[1]) < 1e-6
