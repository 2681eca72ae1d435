"""Rotten Tomatoes review snippets (fresh / rotten), packaged, with a fixed test split.

The corpus (12,808 labelled snippets) ships in ``fedrank/data/rotten_tomatoes/``;
see the ATTRIBUTION.md there for its source. Loading needs no network.
"""

from __future__ import annotations

import bz2
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import numpy as np
import torch

from fedrank.data import splits
from fedrank.data.splits import TextSplit
from fedrank.errors import ConfigError

CORPUS_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
LABELS: tuple[str, str] = ("rotten", "fresh")
"""Label names by class index: 0 = rotten, 1 = fresh."""
TEST_FRACTION = 0.2
SPLIT_SEED = 20240531
DEFAULT_MAX_LENGTH = 64


TextDataset = TextSplit
"""The former name of :class:`~fedrank.data.splits.TextSplit`."""


@dataclass(frozen=True)
class TokenizedText:
    """Token ids, attention mask (both ``(n, max_length)``, int64) and labels ``(n,)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        n = self.input_ids.shape[0]
        if self.attention_mask.shape != self.input_ids.shape:
            raise ValueError(
                f"attention_mask: shape {tuple(self.attention_mask.shape)} differs from "
                f"input_ids {tuple(self.input_ids.shape)}"
            )
        if self.labels.shape != (n,):
            raise ValueError(f"labels: expected shape ({n},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray) -> TokenizedText:
        """The records at ``indices``, in that order (a new object)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return TokenizedText(self.input_ids[idx], self.attention_mask[idx], self.labels[idx])


def read_corpus() -> TextDataset:
    """Every labelled snippet of the packaged corpus, in file order.

    Rows of category ``plot`` (plot synopses, unlabelled for sentiment) are left out.

    Returns
    -------
    TextDataset
        12,808 snippets; label 1 = fresh, 0 = rotten.
    """
    raw = resources.files("fedrank.data").joinpath("rotten_tomatoes", CORPUS_FILE).read_bytes()
    reader = csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8")))
    texts: list[str] = []
    labels: list[int] = []
    for row in reader:
        category = row["category"]
        if category in LABELS:
            texts.append(row["text"])
            labels.append(LABELS.index(category))
    return TextDataset(tuple(texts), np.asarray(labels, dtype=np.int64))


def stratified_split(
    labels: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, test) keeping each class's share in both parts.

    Parameters
    ----------
    labels : np.ndarray
        Integer class of each record.
    test_fraction : float
        Share of each class that goes to the test part, in (0, 1).
    seed : int
        Seed of the permutation; the same seed gives the same split.

    Returns
    -------
    tuple of np.ndarray
        Sorted train indices and sorted test indices; disjoint, covering every record.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("test_fraction", f"must lie in (0, 1), got {test_fraction}")
    return splits.stratified_split(
        labels, test_fraction=test_fraction, rng=np.random.default_rng(seed)
    )


def load_rotten_tomatoes(
    split: Literal["train", "test", "all"] = "train",
    *,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> TextDataset:
    """The packaged corpus, or one side of its fixed, stratified held-out split.

    Parameters
    ----------
    split : {"train", "test", "all"}
        Which part. With the defaults the test part is the same 20% everywhere
        (2,562 snippets), so every run reports on the same held-out records.
    test_fraction, seed : float, int
        Change only to study the split itself.

    Returns
    -------
    TextDataset
    """
    corpus = read_corpus()
    if split == "all":
        return corpus
    if split not in ("train", "test"):
        raise ConfigError("split", f"must be 'train', 'test' or 'all', got {split!r}")
    train_idx, test_idx = stratified_split(corpus.labels, test_fraction=test_fraction, seed=seed)
    return corpus.subset(train_idx if split == "train" else test_idx)


def tokenize(
    data: TextDataset, tokenizer: Any, *, max_length: int = DEFAULT_MAX_LENGTH
) -> TokenizedText:
    """Token ids for every text, padded / truncated on the right to ``max_length``.

    Parameters
    ----------
    data : TextDataset
    tokenizer : transformers.PreTrainedTokenizerBase
        The base's tokenizer from :func:`fedrank.models.bases.load_tokenizer` (it
        always has a padding token: GPT-2-style ones pad with their end token).
    max_length : int
        Sequence length of every row (special tokens included).

    Returns
    -------
    TokenizedText

    Raises
    ------
    ConfigError
        ``max_length`` below 2; ``tokenizer`` without a padding token.
    """
    if max_length < 2:
        raise ConfigError("max_length", f"must be at least 2 tokens, got {max_length}")
    if tokenizer.pad_token is None:
        raise ConfigError(
            "tokenizer", "has no padding token; load it with fedrank.models.bases.load_tokenizer"
        )
    encoded = tokenizer(
        list(data.texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return TokenizedText(
        input_ids=encoded["input_ids"].to(torch.int64),
        attention_mask=encoded["attention_mask"].to(torch.int64),
        labels=torch.as_tensor(data.labels, dtype=torch.int64),
    )
