"""Tiny, randomly initialised bases saved as model folders, as a user would bring them;
one torch thread for the tests that train."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.models import tiny_bases


@pytest.fixture(scope="session")
def tiny_gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT-2 classifier with its own byte-level BPE tokenizer (no pad token)."""
    return tiny_bases.save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT classifier with the MiniLM WordPiece tokenizer."""
    return tiny_bases.save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A client's thread count: two threads on two busy cores wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
