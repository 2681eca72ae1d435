"""The real pretrained MiniLM loads offline, runs and trains (seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrank.data.text import load_rotten_tomatoes, tokenize
from fedrank.lora_training import DpSgdConfig, train_lora
from fedrank.models.lora import LoraSpec, build_lora_model, load_tokenizer


@pytest.mark.integration
def test_minilm_loads_offline_and_a_dp_step_moves_the_adapter() -> None:
    spec = LoraSpec(base="minilm", r=8)
    model = build_lora_model(spec)
    data = tokenize(load_rotten_tomatoes("test").subset(range(16)), load_tokenizer(), max_length=32)

    with torch.no_grad():
        logits = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    dp = DpSgdConfig(noise_multiplier=1.0, max_grad_norm=1.0, physical_batch_size=8)
    result = train_lora(model, data, epochs=1, lr=1e-3, batch_size=8, seed=0, dp=dp)

    assert logits.shape == (16, 2)
    assert torch.isfinite(logits).all()
    # The pretrained encoder is real: 6 layers of 384, and 12 adapted modules.
    assert model.base_model.model.config.hidden_size == 384
    assert sum(k.endswith(".lora_B") for k in result.tensors) == 12
    assert all(np.isfinite(v).all() for v in result.tensors.values())
    assert min(np.abs(v).max() for k, v in result.tensors.items() if k.endswith(".lora_B")) > 0
    assert result.privacy is not None
    assert result.privacy["steps"] == 2
