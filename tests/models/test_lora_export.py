"""The exported folder: what it holds, its model card, and fedrank's own loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer

from fedrank.errors import ConfigError
from fedrank.models import pooling
from fedrank.models.bases import MINILM_HUB_ID, MINILM_REVISION, minilm_path
from fedrank.models.export import BASE_FILE, export_adapter, load_exported_adapter
from fedrank.models.lora import (
    LoraSpec,
    adapter_tensors,
    build_lora_model,
    load_base_model,
    set_adapter_tensors,
)
from fedrank.models.model_card import DpGuarantee, ModelCard
from fedrank.models.pooling import MeanPooledClassifier

CARD = ModelCard(
    data="rotten-tomatoes review snippets, 1,024 training records",
    rounds=7,
    clients=5,
    clients_per_round=3,
    aggregation="ffa",
    accuracy=0.6603,
    test_records=2562,
    label_names=("rotten", "fresh"),
    privacy=(
        DpGuarantee("record", epsilon=7.91, delta=1e-5, clip_norm=1.0, noise_multiplier=0.83),
        DpGuarantee("client", epsilon=2.5, delta=1e-5, clip_norm=0.5, noise_multiplier=1.2),
    ),
)


def random_tensors(spec: LoraSpec, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: rng.normal(scale=0.5, size=v.shape).astype(np.float32)
        for k, v in adapter_tensors(build_lora_model(spec)).items()
        if spec.mode == "lora" or not k.endswith(".lora_A")
    }


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, 3000, (6, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0
    return ids, mask


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("mode", ["lora", "ffa"])
def test_fedranks_loader_reproduces_the_logits(tmp_path: Path, mode: str, pooling: str) -> None:
    spec = LoraSpec(base="tiny-bert", r=4, mode=mode, pooling=pooling)  # type: ignore[arg-type]
    tensors = random_tensors(spec)
    trained = build_lora_model(spec)
    set_adapter_tensors(trained, tensors)
    ids, mask = inputs()
    expected = trained(input_ids=ids, attention_mask=mask).logits.detach()

    loaded = load_exported_adapter(
        export_adapter(spec, tensors, tmp_path / "adapter", card=CARD, max_length=32)
    )

    assert isinstance(loaded.get_base_model(), MeanPooledClassifier) == (pooling == "mean")
    got = loaded(input_ids=ids, attention_mask=mask).logits.detach()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    plain = load_base_model(spec)(input_ids=ids, attention_mask=mask).logits.detach()
    assert not torch.allclose(plain, expected)


def test_a_cls_export_is_a_standard_peft_folder(tmp_path: Path) -> None:
    spec = LoraSpec(base="tiny-bert", r=4)
    folder = export_adapter(spec, random_tensors(spec), tmp_path / "a", card=CARD, max_length=32)

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    loaded = PeftModel.from_pretrained(load_base_model(spec), str(folder))

    assert {p.name for p in folder.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "tokenizer_config.json",
        BASE_FILE,
    }
    assert not (folder / "config.json").exists()
    assert config["base_model_name_or_path"] == "tiny-bert"
    assert sorted(config["target_modules"]) == ["query", "value"]
    assert "classifier" in config["modules_to_save"]
    assert loaded is not None


def test_a_mean_export_ships_its_code_and_hides_its_adapter_from_peft(tmp_path: Path) -> None:
    spec = LoraSpec(base="minilm", r=4, pooling="mean")
    folder = export_adapter(spec, random_tensors(spec), tmp_path / "m", card=CARD, max_length=48)

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    shipped = (folder / pooling.MODELING_FILE).read_text(encoding="utf-8")
    adapter = json.loads((folder / pooling.ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))

    assert not (folder / "adapter_config.json").exists()
    assert not (folder / "adapter_model.safetensors").exists()
    assert config["auto_map"] == {
        "AutoModelForSequenceClassification": "modeling_fedrank.FedrankMeanPooledLoader"
    }
    assert config["fedrank_export"] == {
        "base": MINILM_HUB_ID,
        "revision": MINILM_REVISION,
        "num_labels": 2,
        "pooling": "mean",
    }
    assert config["id2label"] == {"0": "rotten", "1": "fresh"}
    assert shipped == Path(pooling.__file__).read_text(encoding="utf-8")
    assert "import fedrank" not in shipped
    assert "from fedrank" not in shipped
    assert adapter["base_model_name_or_path"] == MINILM_HUB_ID
    assert adapter["revision"] == MINILM_REVISION


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_no_file_names_where_the_packaged_base_lies(tmp_path: Path, pooling: str) -> None:
    spec = LoraSpec(base="minilm", r=2, pooling=pooling)  # type: ignore[arg-type]
    folder = export_adapter(spec, {}, tmp_path / "x", card=CARD, max_length=16)

    for file in folder.iterdir():
        if file.suffix != ".safetensors":
            assert minilm_path() not in file.read_text(encoding="utf-8"), file.name


def test_the_tokenizer_and_its_max_length_travel(tmp_path: Path, tiny_gpt2_folder: Path) -> None:
    spec = LoraSpec(base=str(tiny_gpt2_folder), r=2)
    folder = export_adapter(spec, random_tensors(spec), tmp_path / "g", card=CARD, max_length=24)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    saved = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    batch = tokenizer(["word " * 100, "short"], truncation=True, padding=True)

    assert tokenizer.model_max_length == 24
    assert len(batch["input_ids"][0]) == len(batch["input_ids"][1]) == 24
    assert list(batch) == ["input_ids", "attention_mask"]
    assert tokenizer.pad_token == tokenizer.eos_token
    assert tokenizer.padding_side == "right"
    assert "local_files_only" not in saved


def test_the_model_card_states_the_run(tmp_path: Path) -> None:
    spec = LoraSpec(base="minilm", r=4, pooling="mean", mode="ffa")
    folder = export_adapter(spec, random_tensors(spec), tmp_path / "c", card=CARD, max_length=48)

    card = (folder / "README.md").read_text(encoding="utf-8")

    for fact in (
        f"base_model: {MINILM_HUB_ID}",
        f"revision `{MINILM_REVISION}`",
        CARD.data,
        "5 clients, 3 per round, 7 rounds",
        "0.6603 on 2,562 held-out records",
        "| record | 7.91 | 1e-05 | 1 | 0.83 | rdp |",
        "| client | 2.5 | 1e-05 | 0.5 | 1.2 | rdp |",
        "FFA-LoRA",
        "rank 4, alpha 16, on `query`, `value` (PEFT's default",
        "0 = rotten, 1 = fresh",
        "at most 48 tokens",
        "trust_remote_code=True",
        "differential-privacy",
    ):
        assert fact in card, fact
    assert "/site-packages/" not in card


def test_a_card_without_dp_says_so() -> None:
    card = ModelCard(data="x", rounds=1, clients=2, clients_per_round=1)
    assert card.privacy == ()
    with pytest.raises(ConfigError) as err:
        ModelCard(data="x", rounds=1, clients=2, clients_per_round=3)
    assert err.value.field == "clients_per_round"
    with pytest.raises(ConfigError) as err:
        ModelCard(data="x", rounds=1, clients=2, clients_per_round=1, accuracy=0.5)
    assert err.value.field == "test_records"
    with pytest.raises(ConfigError) as err:
        DpGuarantee("record", epsilon=1.0, delta=0.0, clip_norm=1.0, noise_multiplier=1.0)
    assert err.value.field == "delta"


def test_an_export_replaces_an_earlier_one_and_nothing_else(tmp_path: Path) -> None:
    mean, cls = LoraSpec(base="tiny-bert", pooling="mean"), LoraSpec(base="tiny-bert")
    folder = export_adapter(cls, random_tensors(cls), tmp_path / "a", card=CARD, max_length=16)

    export_adapter(mean, random_tensors(mean), folder, card=CARD, max_length=16)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep", encoding="utf-8")

    # No stale standard adapter is left beside the mean-pooled one.
    assert not (folder / "adapter_config.json").exists()
    assert (folder / pooling.ADAPTER_CONFIG_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "mine"]
    with pytest.raises(ConfigError) as err:
        export_adapter(cls, random_tensors(cls), other, card=CARD, max_length=16)
    assert err.value.field == "folder"
    assert (other / "notes.txt").read_text(encoding="utf-8") == "keep"


def test_a_bad_base_description_names_the_folder(tmp_path: Path) -> None:
    spec = LoraSpec(base="tiny-bert", r=4)
    folder = export_adapter(spec, {}, tmp_path / "adapter", card=CARD, max_length=16)
    (folder / BASE_FILE).write_text('{"base": "tiny-bert", "pooling": "max"}', encoding="utf-8")

    with pytest.raises(ConfigError) as err:
        load_exported_adapter(folder)
    assert err.value.field == "folder"


def test_label_names_must_fit_the_classes(tmp_path: Path) -> None:
    spec = LoraSpec(base="tiny-bert", r=4, num_labels=3)
    with pytest.raises(ConfigError) as err:
        export_adapter(spec, {}, tmp_path / "a", card=CARD, max_length=16)
    assert err.value.field == "label_names"
    assert not (tmp_path / "a").exists()
