"""Load a classification dataset, packaged or the user's own, through Hugging Face ``datasets``.

One path for every source: a ``datasets.Dataset`` (or ``DatasetDict``) is obtained
(a packaged set built in memory, or local files: see :mod:`fedrank.data.files`), its
columns are validated and converted (:mod:`fedrank.data.columns`), a single table is
split into train and test by a stratified draw from a fixed seed, and the result is
an :class:`~fedrank.data.splits.ImageData` or :class:`~fedrank.data.splits.TextData`.
Everything is cached per process.

Every problem is a one-line :class:`~fedrank.errors.ConfigError` naming the field
(``dataset``, ``image-column``, ``label-column``, ``test-fraction``, ...) and the file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from fedrank.data import columns as cols
from fedrank.data.files import read_dataset
from fedrank.data.packaged import PACKAGED, packaged_dataset
from fedrank.data.splits import (
    ImageData,
    ImageSplit,
    Kind,
    TextData,
    TextSplit,
    stratified_split,
    take_records,
)
from fedrank.errors import ConfigError

USER_SPLIT_SEED = 2110_04350
"""Seed of the held-out split of a user's single-table dataset (never the run seed)."""
TEST_RECORDS_SEED = 20240601
"""Seed of the ``test-records`` subset: the same held-out records for every run."""
_KIND_OF_PACKAGED: dict[str, Kind] = {"rotten-tomatoes": "text"}


def _check_name(value: object, name: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, f"must be a non-empty string, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where a run's examples come from and how to read them.

    Parameters
    ----------
    dataset : str
        A packaged name (``mnist5k``, ``digits``, ``rotten-tomatoes``,
        ``synthetic-digits``) or a path: a ``save_to_disk`` folder (a ``DatasetDict``
        with ``train`` and ``test``, or one ``Dataset``), a csv/json/jsonl/parquet/
        npz file, or a folder of such files or of images (one subfolder per class).
        Give paths absolute: simulation workers may run elsewhere.
    image_column, text_column, label_column : str
        Column names in the user's data (packaged sets use the defaults).
    test_fraction : float
        Share of each class held out when the data has no ``test`` split.
    train_records, test_records : int
        A seeded subset of the training / held-out split; 0 keeps all.
    """

    dataset: str = "mnist5k"
    image_column: str = "image"
    text_column: str = "text"
    label_column: str = "label"
    test_fraction: float = 0.2
    train_records: int = 0
    test_records: int = 0

    def __post_init__(self) -> None:
        _check_name(self.dataset, "dataset")
        for name in ("image_column", "text_column", "label_column"):
            _check_name(getattr(self, name), name.replace("_", "-"))
        fraction = self.test_fraction
        if not (isinstance(fraction, int | float) and math.isfinite(fraction)) or not (
            0.0 < fraction < 1.0
        ):
            raise ConfigError("test-fraction", f"must lie in (0, 1), got {fraction!r}")
        for name in ("train_records", "test_records"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    name.replace("_", "-"), f"must be an integer >= 0 (0: all), got {value!r}"
                )

    @property
    def packaged(self) -> bool:
        """Whether ``dataset`` names a set fedrank ships (rather than a path)."""
        return self.dataset in PACKAGED


def load_data(
    source: DataSource, *, kind: Kind | None = None, seed: int = 0
) -> ImageData | TextData:
    """The train and test splits of ``source``, validated (cached per process).

    Parameters
    ----------
    source : DataSource
    kind : {"image", "text"}, optional
        What the task needs; by default the columns decide (image column first).
    seed : int
        The run seed: it draws the ``train-records`` subset, nothing else.

    Returns
    -------
    ImageData or TextData
    """
    return _with_records(source, kind, seed if source.train_records else 0)


def load_image_data(source: DataSource, *, seed: int = 0) -> ImageData:
    """:func:`load_data` for a task that needs images."""
    data = load_data(source, kind="image", seed=seed)
    if not isinstance(data, ImageData):  # kind="image" reads the image column or fails
        raise ConfigError("dataset", f"{source.dataset} holds texts; this task needs images")
    return data


def load_text_data(source: DataSource, *, seed: int = 0) -> TextData:
    """:func:`load_data` for a task that needs texts."""
    data = load_data(source, kind="text", seed=seed)
    if not isinstance(data, TextData):  # kind="text" reads the text column or fails
        raise ConfigError("dataset", f"{source.dataset} holds images; this task needs texts")
    return data


@functools.lru_cache(maxsize=8)
def _with_records(source: DataSource, kind: Kind | None, seed: int) -> ImageData | TextData:
    full = _full(dataclasses.replace(source, train_records=0, test_records=0), kind)
    if not (source.train_records or source.test_records):
        return full
    train_count, test_count = source.train_records, source.test_records
    if isinstance(full, ImageData):
        return dataclasses.replace(
            full,
            train=take_records(full.train, train_count, seed=seed),
            test=take_records(full.test, test_count, seed=TEST_RECORDS_SEED),
        )
    return dataclasses.replace(
        full,
        train=take_records(full.train, train_count, seed=seed),
        test=take_records(full.test, test_count, seed=TEST_RECORDS_SEED),
    )


@functools.lru_cache(maxsize=4)
def _full(source: DataSource, kind: Kind | None) -> ImageData | TextData:
    if source.packaged:
        packaged_kind = _KIND_OF_PACKAGED.get(source.dataset, "image")
        if kind is not None and kind != packaged_kind:
            raise ConfigError(
                "dataset",
                f"{source.dataset!r} is a {packaged_kind} dataset; this task needs {kind}s",
            )
        # Packaged sets always use the default column names.
        source = DataSource(dataset=source.dataset, test_fraction=source.test_fraction)
        raw, split_seed = packaged_dataset(source.dataset), PACKAGED[source.dataset]
    else:
        raw, split_seed = read_dataset(source.dataset, field="dataset"), USER_SPLIT_SEED
    return convert(raw, source, kind=kind, split_seed=split_seed, where=source.dataset)


def convert(
    raw: Any,
    source: DataSource,
    *,
    kind: Kind | None,
    split_seed: int,
    where: str,
    field: str = "dataset",
) -> ImageData | TextData:
    """A ``datasets.Dataset`` or ``DatasetDict`` as validated train/test splits.

    A ``DatasetDict`` must hold ``train``; its ``test`` is the held-out split when
    present, otherwise ``train`` is split as a single table would be.
    """
    import datasets

    if isinstance(raw, datasets.DatasetDict):
        if "train" not in raw:
            raise ConfigError(field, f"{where}: has splits {list(raw)}; it needs 'train'")
        train_raw, test_raw = raw["train"], raw.get("test")
    else:
        train_raw, test_raw = raw, None
    if kind is None:
        kind = _kind(train_raw, source, where=where)
    train_x, train_y = read_split(train_raw, source, kind, where=f"{where} [train]", field=field)
    if test_raw is None:
        train_idx, test_idx = stratified_split(
            train_y, test_fraction=source.test_fraction, rng=np.random.default_rng(split_seed)
        )
        if not (train_idx.size and test_idx.size):
            raise ConfigError(
                "test-fraction",
                f"{where}: {source.test_fraction} of {len(train_y)} examples "
                "leaves an empty train or test split",
            )
        test_x, test_y = _rows(train_x, test_idx), train_y[test_idx]
        train_x, train_y = _rows(train_x, train_idx), train_y[train_idx]
    else:
        test_x, test_y = read_split(test_raw, source, kind, where=f"{where} [test]", field=field)
    num_classes = _num_classes(train_raw, source.label_column, train_y, test_y)
    names = class_names(train_raw, source.label_column)
    for labels, part in ((train_y, "train"), (test_y, "test")):
        cols.check_label_range(labels, num_classes, field=field, where=f"{where} [{part}]")
    if isinstance(train_x, np.ndarray) and isinstance(test_x, np.ndarray):
        if train_x.shape[1:] != test_x.shape[1:]:
            raise ConfigError(
                field,
                f"{where}: test images are {test_x.shape[1:]}, train images {train_x.shape[1:]}",
            )
        return ImageData(
            source.dataset,
            ImageSplit(train_x, train_y),
            ImageSplit(test_x, test_y),
            num_classes,
            names,
        )
    if isinstance(train_x, tuple) and isinstance(test_x, tuple):
        return TextData(
            source.dataset,
            TextSplit(train_x, train_y),
            TextSplit(test_x, test_y),
            num_classes,
            names,
        )
    raise TypeError(
        f"mixed splits: {type(train_x)} and {type(test_x)}"
    )  # read_split gives one kind


def _kind(raw: Any, source: DataSource, *, where: str) -> Kind:
    present = list(raw.column_names)
    if source.image_column in present:
        return "image"
    if source.text_column in present:
        return "text"
    raise ConfigError(
        "image-column",
        f"{where} has neither an image column {source.image_column!r} nor a text column "
        f"{source.text_column!r} (text-column); its columns: {present}",
    )


def feature_column(source: DataSource, kind: Kind) -> tuple[str, str]:
    """(column name, configuration field) of the features of ``kind``."""
    if kind == "image":
        return source.image_column, "image-column"
    return source.text_column, "text-column"


def read_split(
    raw: Any, source: DataSource, kind: Kind, *, where: str, field: str, blame_file: bool = False
) -> tuple[np.ndarray | tuple[str, ...], np.ndarray]:
    """Features and labels of one Hugging Face split, validated.

    Parameters
    ----------
    raw : datasets.Dataset
    source : DataSource
        Its column names are read.
    kind : {"image", "text"}
    where, field : str
        The file or dataset (for messages) and the field blamed on bad content.
    blame_file : bool
        Blame a missing column on ``field`` too (a site's file), not on its setting.
    """
    table = raw.with_format("arrow")[:]
    name, setting = feature_column(source, kind)
    blamed = field if blame_file else None
    features = cols.column(table, name, setting=setting, field=blamed, where=where)
    label = cols.column(
        table, source.label_column, setting="label-column", field=blamed, where=where
    )
    if table.num_rows == 0:
        raise ConfigError(field, f"{where}: holds no examples")
    labels = cols.label_array(label, field=field, where=where)
    if kind == "image":
        return cols.image_array(features, field=field, where=where), labels
    return cols.text_tuple(features, field=field, where=where), labels


def _rows(values: np.ndarray | tuple[str, ...], idx: np.ndarray) -> np.ndarray | tuple[str, ...]:
    if isinstance(values, np.ndarray):
        return np.take(values, idx, axis=0)
    return tuple(values[i] for i in idx)


def class_names(raw: Any, label_column: str) -> tuple[str, ...] | None:
    """The label column's class names (a ``ClassLabel``, e.g. imagefolder's folders), or None."""
    import datasets

    feature = raw.features.get(label_column)
    return tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _num_classes(raw: Any, label_column: str, *labels: np.ndarray) -> int:
    """The label feature's class count (``ClassLabel``), else the largest label + 1."""
    import datasets

    feature = raw.features.get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return int(feature.num_classes)
    return int(max(int(y.max()) for y in labels if y.size)) + 1
