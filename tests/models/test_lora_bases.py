"""LoRA on bases other than MiniLM: model folders of any architecture, end to end.

GPT-2-style and BERT-style classifiers built from configs and saved to folders train
through fedrank's API with PEFT's default target modules for their architecture;
each way a base can be wrong is a one-line ConfigError naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    T5Config,
    ViTConfig,
)

from fedrank.data.text import TokenizedText, load_rotten_tomatoes, tokenize
from fedrank.errors import ConfigError
from fedrank.lora_training import DpSgdConfig, train_lora
from fedrank.models.bases import MINILM_HUB_ID, MINILM_REVISION, load_tokenizer, resolve_base
from fedrank.models.evaluation import evaluate_lora
from fedrank.models.lora import (
    LoraSpec,
    build_lora_model,
    resolved_target_modules,
    trainable_tensors,
)
from fedrank.privacy.randomness import RandomSource


def records(base: str, n: int = 64, max_length: int = 32) -> TokenizedText:
    return tokenize(
        load_rotten_tomatoes("train").subset(range(n)), load_tokenizer(base), max_length=max_length
    )


@pytest.mark.parametrize(
    ("which", "pooling", "model_type", "head"),
    [
        ("gpt2", "cls", "gpt2", "score.weight"),
        ("gpt2", "mean", "gpt2", "classifier.weight"),
        ("bert", "cls", "bert", "classifier.weight"),
    ],
)
def test_a_saved_model_folder_trains_end_to_end_on_peft_default_targets(
    tiny_gpt2_folder: Path,
    tiny_bert_folder: Path,
    which: str,
    pooling: str,
    model_type: str,
    head: str,
) -> None:
    folder = tiny_gpt2_folder if which == "gpt2" else tiny_bert_folder
    spec = LoraSpec(base=str(folder), r=4, pooling=pooling)  # type: ignore[arg-type]
    model = build_lora_model(spec)
    data = records(spec.base)
    _, loss_before = evaluate_lora(model, data)

    result = train_lora(model, data, epochs=4, lr=1e-2, head_lr=5e-2, batch_size=16, seed=0)

    _, loss_after = evaluate_lora(model, data)
    assert resolved_target_modules(model) == tuple(PEFT_DEFAULTS[model_type])
    assert head in result.tensors
    layers = 2
    assert sum(k.endswith(".lora_B") for k in result.tensors) == layers * len(
        PEFT_DEFAULTS[model_type]
    )
    assert loss_after < loss_before - 0.01


def test_a_gpt2_base_pads_with_its_end_token_and_reads_the_last_real_token(
    tiny_gpt2_folder: Path,
) -> None:
    base = str(tiny_gpt2_folder)
    tokenizer = load_tokenizer(base)
    model = build_lora_model(LoraSpec(base=base, r=4))
    data = records(base, n=8, max_length=64)

    with torch.no_grad():
        batch = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
        alone = [
            model(input_ids=data.input_ids[i : i + 1, : int(data.attention_mask[i].sum())]).logits
            for i in range(8)
        ]

    assert tokenizer.pad_token == tokenizer.eos_token
    assert model.get_base_model().config.pad_token_id == tokenizer.pad_token_id
    assert bool((data.attention_mask == 0).any())  # the batch is padded
    torch.testing.assert_close(batch, torch.cat(alone), rtol=0, atol=1e-5)


def test_one_dp_step_on_gpt2_lora_equals_the_plain_step(tiny_gpt2_folder: Path) -> None:
    # Opacus must find per-example gradients of the LoRA matrices on GPT-2's Conv1D
    # attention (the model of opacus#820) and of its head. Rate-1 sampling, no clipping,
    # no noise: the private step is the plain one.
    spec = LoraSpec(base=str(tiny_gpt2_folder), r=4)
    data = records(spec.base, n=24)
    plain, private = build_lora_model(spec), build_lora_model(spec)
    dp = DpSgdConfig(noise_multiplier=1e-12, max_grad_norm=1e3)

    expected = train_lora(plain, data, epochs=1, lr=0.5, batch_size=24, seed=0, optimizer="sgd")
    got = train_lora(
        private, data, epochs=1, lr=0.5, batch_size=24, seed=0, optimizer="sgd", dp=dp,
        randomness=RandomSource.reproducible(0),
    )  # fmt: skip

    assert got.privacy is not None
    assert set(got.tensors) == set(expected.tensors)
    for name, value in expected.tensors.items():
        np.testing.assert_allclose(got.tensors[name], value, rtol=1e-4, atol=1e-6)


def test_named_targets_are_used_and_recorded(tiny_gpt2_folder: Path) -> None:
    spec = LoraSpec(base=str(tiny_gpt2_folder), r=2, target_modules=("c_attn", "c_fc"))

    model = build_lora_model(spec)

    assert resolved_target_modules(model) == ("c_attn", "c_fc")
    assert sum(k.endswith(".lora_A") for k in trainable_tensors(model)) == 4


def save_config(folder: Path, config: object) -> str:
    folder.mkdir()
    config.save_pretrained(folder)  # type: ignore[attr-defined]
    return str(folder)


def save_tiny_distilbert(folder: Path) -> str:
    config = DistilBertConfig(
        vocab_size=load_tokenizer().vocab_size, dim=32, n_layers=1, n_heads=2, hidden_dim=64
    )
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return str(folder)


def test_a_base_without_peft_defaults_asks_for_targets_then_works(tmp_path: Path) -> None:
    base = save_tiny_distilbert(tmp_path / "distilbert")

    with pytest.raises(ConfigError) as err:
        build_lora_model(LoraSpec(base=base))
    model = build_lora_model(LoraSpec(base=base, target_modules=("q_lin", "v_lin")))

    assert err.value.field == "target_modules"
    assert "lora-targets" in str(err.value)
    assert "q_lin" in str(err.value)
    # DistilBERT's head is two layers: both are new, both travel.
    assert {"pre_classifier.weight", "classifier.weight"} <= set(trainable_tensors(model))


def bad_bases(tmp_path: Path) -> list[tuple[str, str, str]]:
    """(base, field, words of the message) for each way a base can be wrong."""
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "README.md").write_text("not a model", encoding="utf-8")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no-such-type"}), "utf-8")
    return [
        (str(tmp_path / "missing"), "base", "no such model folder"),
        (str(not_a_model), "base", "no config.json"),
        ("fedrank-tests/no-such-model", "base", "not in the local Hugging Face cache"),
        (save_config(tmp_path / "vit", ViTConfig()), "base", "no sequence-classification"),
        (str(unknown), "base", "no-such-type"),
    ]


def test_every_bad_base_is_a_one_line_config_error(tmp_path: Path) -> None:
    for base, field, words in bad_bases(tmp_path):
        with pytest.raises(ConfigError) as err:
            build_lora_model(LoraSpec(base=base))
        assert err.value.field == field, base
        assert words in str(err.value), str(err.value)
        assert "\n" not in str(err.value)


def test_mean_pooling_is_refused_where_it_cannot_be_built(tmp_path: Path) -> None:
    t5 = save_config(tmp_path / "t5", T5Config(d_model=32, num_layers=1, num_heads=2))

    with pytest.raises(ConfigError) as err:
        build_lora_model(LoraSpec(base=t5, pooling="mean"))

    assert err.value.field == "pooling"
    assert "encoder-decoder" in str(err.value)


def test_targets_that_match_nothing_name_the_layers_there_are(tiny_bert_folder: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build_lora_model(LoraSpec(base=str(tiny_bert_folder), target_modules=("q_proj",)))

    assert err.value.field == "target_modules"
    assert "query" in str(err.value)
    assert "\n" not in str(err.value)


def test_bases_are_named_as_users_name_them(tiny_gpt2_folder: Path) -> None:
    minilm = resolve_base("minilm")
    folder = resolve_base(str(tiny_gpt2_folder))
    hub = resolve_base("openai-community/gpt2")

    assert (minilm.public_name, minilm.revision) == (MINILM_HUB_ID, MINILM_REVISION)
    assert Path(minilm.location or "", "model.safetensors").is_file()
    assert folder.public_name == folder.location == str(tiny_gpt2_folder)
    assert (hub.location, hub.public_name, hub.revision) == ("openai-community/gpt2",) * 2 + (None,)
    for bad in ("", "   ", "not a/valid/hub id"):
        with pytest.raises(ConfigError) as err:
            resolve_base(bad)
        assert err.value.field == "base"
