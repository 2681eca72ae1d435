"""The packaged rotten-tomatoes corpus, its fixed split and tokenisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrank.data.text import (
    TextDataset,
    load_rotten_tomatoes,
    read_corpus,
    stratified_split,
    tokenize,
)
from fedrank.errors import ConfigError


def test_corpus_has_every_labelled_snippet() -> None:
    corpus = read_corpus()

    assert len(corpus) == 12_808
    assert int(corpus.labels.sum()) == 7_403  # fresh
    assert set(np.unique(corpus.labels)) == {0, 1}
    assert all(isinstance(t, str) and t for t in corpus.texts)


def test_default_split_is_fixed_disjoint_and_stratified() -> None:
    corpus = read_corpus()
    train_idx, test_idx = stratified_split(corpus.labels, test_fraction=0.2, seed=20240531)

    train, test = load_rotten_tomatoes("train"), load_rotten_tomatoes("test")

    assert len(train) + len(test) == len(corpus)
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert len(test) == round(0.2 * 7_403) + round(0.2 * 5_405)
    assert abs(test.labels.mean() - corpus.labels.mean()) < 1e-3
    assert test.texts == tuple(corpus.texts[i] for i in test_idx)
    assert load_rotten_tomatoes("test").texts == test.texts


def test_split_depends_on_its_seed() -> None:
    labels = np.repeat([0, 1], 50)
    _, first = stratified_split(labels, test_fraction=0.2, seed=1)
    _, second = stratified_split(labels, test_fraction=0.2, seed=2)
    _, again = stratified_split(labels, test_fraction=0.2, seed=1)

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    assert np.bincount(labels[first]).tolist() == [10, 10]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_test_fraction_names_the_field(fraction: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        stratified_split(np.zeros(10, dtype=np.int64), test_fraction=fraction, seed=0)


def test_bad_split_name_is_rejected() -> None:
    with pytest.raises(ConfigError, match="split"):
        load_rotten_tomatoes("validation")  # type: ignore[arg-type]


def test_tokenize_pads_and_truncates_to_max_length() -> None:
    from fedrank.models.lora import load_tokenizer

    data = TextDataset(("a fine film", " ".join(["long"] * 100)), np.array([1, 0]))

    tokens = tokenize(data, load_tokenizer(), max_length=16)

    assert tokens.input_ids.shape == (2, 16)
    assert tokens.input_ids.dtype == torch.int64
    assert tokens.attention_mask[0].sum() == 5  # [CLS] a fine film [SEP]
    assert tokens.attention_mask[1].sum() == 16
    assert tokens.labels.tolist() == [1, 0]
    assert tokens.subset([1]).input_ids.shape == (1, 16)


def test_mismatched_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="labels"):
        TextDataset(("a", "b"), np.array([1]))
