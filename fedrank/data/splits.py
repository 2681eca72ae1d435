"""The typed examples a task consumes: one split of images or texts, and a whole dataset.

Every loader of :mod:`fedrank.data` ends here: images as float32 ``(N, C, H, W)`` in
[0, 1], texts as a tuple of str, labels as int64 ``(N,)``. Splitting (the fixed
held-out part, a seeded subset of records, a client's partition) only selects rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, Protocol, Self, TypeVar

import numpy as np

Kind = Literal["image", "text"]


class Split(Protocol):
    """What every split offers: its labels, its length and a row selection."""

    @property
    def labels(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def subset(self, indices: Sequence[int] | np.ndarray) -> Self: ...


SplitT = TypeVar("SplitT", bound=Split)


def _check_labels(labels: np.ndarray, n: int) -> None:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels: expected shape ({n},), got {labels.shape}")


@dataclasses.dataclass(frozen=True)
class ImageSplit:
    """Images ``(N, C, H, W)`` float32 in [0, 1] and integer labels ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images: expected (N, C, H, W), got shape {self.images.shape}")
        _check_labels(self.labels, self.images.shape[0])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSplit:
        """The examples at ``indices``, in that order (new arrays)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSplit(self.images[idx], self.labels[idx])


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """Texts and their integer labels (``labels[i]`` is the class of ``texts[i]``)."""

    texts: tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self) -> None:
        _check_labels(self.labels, len(self.texts))

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextSplit:
        """The records at ``indices``, in that order (a new object)."""
        idx = np.asarray(indices, dtype=np.int64)
        return TextSplit(tuple(self.texts[i] for i in idx), self.labels[idx].copy())


@dataclasses.dataclass(frozen=True, eq=False)
class ImageData:
    """An image classification dataset with its fixed train/test split."""

    name: str
    train: ImageSplit
    test: ImageSplit
    num_classes: int
    class_names: tuple[str, ...] | None = None
    """Names of the classes by index, when the label column carries them (``ClassLabel``)."""
    kind: Literal["image"] = dataclasses.field(default="image", init=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The same as :attr:`input_shape` (the name the image task used)."""
        return self.input_shape


@dataclasses.dataclass(frozen=True, eq=False)
class TextData:
    """A text classification dataset with its fixed train/test split."""

    name: str
    train: TextSplit
    test: TextSplit
    num_classes: int
    class_names: tuple[str, ...] | None = None
    """Names of the classes by index, when the label column carries them (``ClassLabel``)."""
    kind: Literal["text"] = dataclasses.field(default="text", init=False)

    @property
    def input_shape(self) -> tuple[()]:
        """Texts have no fixed shape; the task's tokenizer gives them one."""
        return ()


def stratified_split(
    labels: np.ndarray, *, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/test split (each class split in the same ratio).

    Parameters
    ----------
    labels : np.ndarray
        Integer class of each example.
    test_fraction : float
        Share of each class that goes to the test part.
    rng : numpy.random.Generator
        One permutation is drawn per class, in increasing class order.

    Returns
    -------
    tuple of np.ndarray
        Sorted train indices and sorted test indices; disjoint, covering every example.
    """
    train: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    test: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cut = round(len(idx) * test_fraction)
        test.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def seeded_rows(num_rows: int, count: int, *, seed: int) -> np.ndarray:
    """Sorted indices of ``count`` rows drawn without replacement (all rows if ``count`` is 0).

    The draw is the prefix of one seeded permutation, so a smaller ``count`` with the
    same seed gives a subset of a larger one. Rows stay in file order: a sorted
    selection of a shuffled prefix, because files are often ordered by class.
    """
    if count <= 0 or count >= num_rows:
        return np.arange(num_rows, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(num_rows)[:count])


def take_records(split: SplitT, count: int, *, seed: int) -> SplitT:
    """A seeded subset of ``count`` records of ``split`` (``split`` itself when 0 or more).

    Parameters
    ----------
    split : ImageSplit or TextSplit
    count : int
        How many records; 0 keeps all of them (``train-records`` / ``test-records``).
    seed : int
        The run seed for a training subset; a constant for the held-out one, so that
        every run evaluates on the same records.
    """
    if count <= 0 or count >= len(split):
        return split
    return split.subset(seeded_rows(len(split), count, seed=seed))
