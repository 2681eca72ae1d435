"""Exports load in plain transformers + peft and reproduce fedrank's evaluation exactly.

A subprocess that imports only torch, transformers and peft runs the loading code of
each folder's README.md as written, and a few plain calls a user might write instead.
The documented call must give fedrank's logits and accuracy; every other call must
give them too or fail loudly, never other predictions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedrank.data.text import load_rotten_tomatoes, tokenize
from fedrank.models.bases import MINILM_HUB_ID, load_tokenizer
from fedrank.models.evaluation import classifier_logits, evaluate_lora
from fedrank.models.export import export_adapter
from fedrank.models.lora import LoraSpec, adapter_tensors, build_lora_model, set_adapter_tensors
from fedrank.models.model_card import ModelCard
from tests.models import tiny_bases

SCRIPT = Path(__file__).with_name("plain_load.py")
MAX_LENGTH = 40
NAIVE = ["auto-peft", "transformers", "peft-on-base"]
CARD = ModelCard(data="rotten-tomatoes snippets", rounds=2, clients=3, clients_per_round=3)


def texts_and_labels(n: int, num_labels: int) -> tuple[list[str], np.ndarray]:
    data = load_rotten_tomatoes("test").subset(range(n))
    return list(data.texts), data.labels % num_labels


def exported_job(
    spec: LoraSpec,
    folder: Path,
    *,
    base: str,
    n: int = 48,
    scale: float = 0.5,
    also: tuple[str, ...] = tuple(NAIVE),
) -> tuple[dict[str, Any], torch.Tensor, float]:
    """Export a random adapter; the job for the script, fedrank's logits and accuracy."""
    rng = np.random.default_rng(spec.init_seed)
    tensors = {
        k: rng.normal(scale=scale, size=v.shape).astype(np.float32)
        for k, v in adapter_tensors(build_lora_model(spec)).items()
    }
    model = build_lora_model(spec)
    set_adapter_tensors(model, tensors)
    texts, labels = texts_and_labels(n, spec.num_labels)
    data = tokenize(
        load_rotten_tomatoes("test").subset(range(n)),
        load_tokenizer(spec.base),
        max_length=MAX_LENGTH,
    )
    data = type(data)(data.input_ids, data.attention_mask, torch.as_tensor(labels))
    accuracy, _ = evaluate_lora(model, data)
    with torch.no_grad():
        logits = classifier_logits(model, data.input_ids, data.attention_mask)
    export_adapter(spec, tensors, folder, card=CARD, max_length=MAX_LENGTH)
    job = {
        "folder": str(folder),
        "texts": texts,
        "base": base,
        "num_labels": spec.num_labels,
        "also": list(also),
    }
    return job, logits, accuracy


def run_plain(jobs: list[dict[str, Any]], tmp_path: Path, **env: str) -> list[dict[str, Any]]:
    """Run the plain loader on ``jobs`` in a fresh interpreter; its results per job."""
    jobs_file, out_file = tmp_path / "jobs.json", tmp_path / "out.json"
    jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment |= {
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "hf-modules"),
        **env,
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(jobs_file), str(out_file)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(out_file.read_text(encoding="utf-8"))
    assert out["fedrank_modules"] == []
    return out["results"]  # type: ignore[no-any-return]


def check(result: dict[str, Any], expected: torch.Tensor, accuracy: float, labels: Any) -> None:
    """The documented call reproduces fedrank exactly; every other call does or raises."""
    documented = torch.tensor(result["documented"])
    torch.testing.assert_close(documented, expected, rtol=0, atol=1e-5)
    got = int((documented.argmax(dim=-1) == torch.as_tensor(labels)).sum()) / len(labels)
    assert got == accuracy
    for call in NAIVE:
        if call not in result:
            continue
        if isinstance(result[call], dict):
            assert result[call]["error"]  # loud
        else:
            torch.testing.assert_close(torch.tensor(result[call]), expected, rtol=0, atol=1e-5)


def test_tiny_gpt2_and_bert_exports_load_plainly_and_exactly(
    tmp_path: Path, tiny_gpt2_folder: Path, tiny_bert_folder: Path
) -> None:
    cases = [
        (LoraSpec(base=str(tiny_gpt2_folder), r=4, pooling="cls"), "gpt2-cls"),
        (LoraSpec(base=str(tiny_gpt2_folder), r=4, pooling="mean", init_seed=1), "gpt2-mean"),
        (LoraSpec(base=str(tiny_bert_folder), r=4, pooling="cls", init_seed=2), "bert-cls"),
        (LoraSpec(base=str(tiny_bert_folder), r=4, pooling="mean", init_seed=3), "bert-mean"),
        (LoraSpec(base=str(tiny_bert_folder), r=4, num_labels=3, init_seed=4), "bert-3"),
    ]
    jobs, expected = [], []
    for spec, name in cases:
        job, logits, accuracy = exported_job(spec, tmp_path / name, base=spec.base)
        jobs.append(job)
        expected.append((logits, accuracy, texts_and_labels(48, spec.num_labels)[1]))

    results = run_plain(jobs, tmp_path)

    for result, (logits, accuracy, labels) in zip(results, expected, strict=True):
        check(result, logits, accuracy, labels)
    by_name = dict(zip([name for _, name in cases], results, strict=True))
    # Mean pooling: no plain call finds an adapter to put on the base's own head.
    for name in ("gpt2-mean", "bert-mean"):
        assert all(isinstance(by_name[name][call], dict) for call in NAIVE)
    # The BERT head is the standard one: every plain call is right.
    assert not any(isinstance(by_name["bert-cls"][call], dict) for call in NAIVE)
    # Three classes: a loader that does not size the head says so.
    assert "size mismatch" in by_name["bert-3"]["auto-peft"]["error"]
    # GPT-2 without a pad token in its config: the plain head refuses padded batches.
    assert "padding token" in by_name["gpt2-cls"]["auto-peft"]["error"]


@pytest.mark.integration
def test_minilm_exports_load_by_hub_id_and_reproduce_the_accuracy(tmp_path: Path) -> None:
    cache = tiny_bases.minilm_hub_cache(tmp_path / "hub")
    cases = [LoraSpec(base="minilm", pooling="cls"), LoraSpec(base="minilm", pooling="mean")]
    jobs, expected = [], []
    for spec in cases:
        # The plain calls that would put a mean-pooled adapter on the wrong head are
        # what an outside user met; the tiny bases cover the rest.
        also = NAIVE if spec.pooling == "mean" else []
        job, logits, accuracy = exported_job(
            spec, tmp_path / spec.pooling, base=MINILM_HUB_ID, n=96, scale=0.2, also=tuple(also)
        )
        jobs.append(job)
        expected.append((logits, accuracy))

    results = run_plain(jobs, tmp_path, HF_HUB_CACHE=str(cache))

    labels = texts_and_labels(96, 2)[1]
    for result, (logits, accuracy) in zip(results, expected, strict=True):
        check(result, logits, accuracy, labels)
    assert all(isinstance(results[1][call], dict) for call in NAIVE)
    config = json.loads((tmp_path / "cls" / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == MINILM_HUB_ID
