"""Builders of tiny model folders and of an offline Hugging Face cache, for the tests.

Every folder is what ``save_pretrained`` writes for a real model: ``config.json``,
``model.safetensors`` and tokenizer files. Weights are random (seeded), so tests
check behaviour and exactness, not accuracy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    PreTrainedTokenizerFast,
)

from fedrank.data.text import load_rotten_tomatoes
from fedrank.models.bases import MINILM_HUB_ID, MINILM_REVISION, minilm_path

END = "<|endoftext|>"


def save_tiny_gpt2(folder: Path) -> Path:
    """A 2-layer GPT-2 classifier and a byte-level BPE tokenizer trained here.

    The tokenizer has an end token and no pad token, as GPT-2's own.
    """
    bpe = ByteLevelBPETokenizer()
    texts = load_rotten_tomatoes("train").texts[:1500]
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=2, special_tokens=[END])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=END, eos_token=END, unk_token=END
    )
    end = tokenizer.convert_tokens_to_ids(END)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=end,
        eos_token_id=end,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT classifier of hidden size 32 and the MiniLM tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def minilm_hub_cache(root: Path) -> Path:
    """A Hugging Face cache that holds the packaged MiniLM under its Hub id and revision.

    What a user has after downloading ``sentence-transformers/all-MiniLM-L6-v2`` once:
    the Hub id then resolves offline (``HF_HUB_CACHE=root``, ``HF_HUB_OFFLINE=1``).
    The packaged files are the Hub's at that revision (same safetensors sha256).
    """
    repo = root / ("models--" + MINILM_HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / MINILM_REVISION
    snapshot.mkdir(parents=True)
    for item in Path(minilm_path()).iterdir():
        if item.is_file():
            (snapshot / item.name).symlink_to(item)
        else:
            shutil.copytree(item, snapshot / item.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MINILM_REVISION, encoding="utf-8")
    return root
