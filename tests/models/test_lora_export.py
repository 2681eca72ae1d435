"""The exported PEFT folder loads with PEFT alone and reproduces the model exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel

from fedrank.errors import ConfigError
from fedrank.models.export import BASE_FILE, export_adapter, load_exported_adapter
from fedrank.models.lora import (
    LoraSpec,
    adapter_tensors,
    build_lora_model,
    load_base_model,
    set_adapter_tensors,
)
from fedrank.models.pooling import MeanPoolBertForSequenceClassification


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("mode", ["lora", "ffa"])
def test_exported_adapter_reproduces_the_logits(tmp_path: Path, mode: str, pooling: str) -> None:
    spec = LoraSpec(base="tiny-bert", r=4, mode=mode, pooling=pooling)  # type: ignore[arg-type]
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


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_folder_names_its_base_and_loads_on_it(tmp_path: Path, pooling: str) -> None:
    spec = LoraSpec(base="tiny-bert", r=4, pooling=pooling, init_seed=3)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    tensors = {
        k: rng.normal(scale=0.5, size=v.shape).astype(np.float32)
        for k, v in adapter_tensors(build_lora_model(spec)).items()
    }
    trained = build_lora_model(spec)
    set_adapter_tensors(trained, tensors)
    ids = torch.randint(1000, 3000, (5, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    expected = trained(input_ids=ids, attention_mask=mask).logits.detach()

    loaded = load_exported_adapter(export_adapter(spec, tensors, tmp_path / "adapter"))

    base = loaded.get_base_model()
    assert isinstance(base, MeanPoolBertForSequenceClassification) == (pooling == "mean")
    got = loaded(input_ids=ids, attention_mask=mask).logits.detach()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_bad_base_description_names_the_folder(tmp_path: Path) -> None:
    folder = export_adapter(LoraSpec(base="tiny-bert", r=4), {}, tmp_path / "adapter")
    (folder / BASE_FILE).write_text('{"base": "tiny-bert", "pooling": "max"}', encoding="utf-8")

    with pytest.raises(ConfigError) as err:
        load_exported_adapter(folder)
    assert err.value.field == "folder"
