"""The exported PEFT folder loads with PEFT alone and reproduces the model exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel

from fedrank.models.export import export_adapter
from fedrank.models.lora import LoraSpec, adapter_tensors, build_lora_model, load_base_model


@pytest.mark.parametrize("mode", ["lora", "ffa"])
def test_exported_adapter_reproduces_the_logits(tmp_path: Path, mode: str) -> None:
    spec = LoraSpec(base="tiny-bert", r=4, mode=mode)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    tensors = {
        k: rng.normal(scale=0.5, size=v.shape).astype(np.float32)
        for k, v in adapter_tensors(build_lora_model(spec)).items()
        if mode == "lora" or not k.endswith(".lora_A")
    }
    ids = torch.randint(1000, 3000, (6, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0
    trained = build_lora_model(spec)
    from fedrank.models.lora import set_adapter_tensors

    set_adapter_tensors(trained, tensors)
    expected = trained(input_ids=ids, attention_mask=mask).logits.detach()

    folder = export_adapter(spec, tensors, tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(load_base_model(spec), str(folder)).eval()

    assert {p.name for p in folder.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    got = loaded(input_ids=ids, attention_mask=mask).logits.detach()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    plain = load_base_model(spec)(input_ids=ids, attention_mask=mask).logits.detach()
    assert not torch.allclose(plain, expected)
