"""A site's own examples (``data-path`` in a SuperNode's node config), for any task.

In a deployment a site trains on data that never leaves it. ``data-path`` names a
file or folder in any format :mod:`fedrank.data.files` reads (a ``save_to_disk``
folder, csv/json/jsonl/parquet, an image folder, or ``.npz`` with ``images`` and
``labels`` as before), with the run's column names. Every example is a training
example: of a ``DatasetDict`` only ``train`` is read.

The examples are checked against the run: the kind (image column or text column),
the image shape the server's model was built for, and the number of classes. Every
problem is a one-line :class:`~fedrank.errors.ConfigError` on ``data-path`` naming
the file, raised when the SuperNode's ClientApp first loads it, before it trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from fedrank.data import columns as cols
from fedrank.data.files import read_dataset
from fedrank.data.source import DataSource, read_split
from fedrank.data.source import class_names as source_class_names
from fedrank.data.splits import ImageSplit, Kind, TextSplit
from fedrank.errors import ConfigError

FIELD = "data-path"


@overload
def load_site_data(
    path: str | Path,
    *,
    kind: Literal["image"],
    input_shape: tuple[int, ...],
    num_classes: int,
    class_names: tuple[str, ...] | None = None,
    columns: DataSource | None = None,
) -> ImageSplit: ...


@overload
def load_site_data(
    path: str | Path,
    *,
    kind: Literal["text"],
    input_shape: tuple[int, ...],
    num_classes: int,
    class_names: tuple[str, ...] | None = None,
    columns: DataSource | None = None,
) -> TextSplit: ...


def load_site_data(
    path: str | Path,
    *,
    kind: Kind,
    input_shape: tuple[int, ...],
    num_classes: int,
    class_names: tuple[str, ...] | None = None,
    columns: DataSource | None = None,
) -> ImageSplit | TextSplit:
    """Load and validate a site's examples.

    Parameters
    ----------
    path : str or Path
        The node's ``data-path``.
    kind : {"image", "text"}
        What the run's task trains on.
    input_shape : tuple of int
        ``(C, H, W)`` of the run's images (``ImageData.input_shape``); ``()`` for text.
    num_classes : int
        The run's number of classes; every label must lie in ``[0, num_classes)``.
    class_names : tuple of str, optional
        The run's class names (``ImageData.class_names``). When the site's label column
        names its classes too (an image folder's subfolders), labels are mapped by
        name: a site holding some of the classes keeps their run indices, and a class
        the run does not know is refused (by index, a missing folder would shift
        every later class).
    columns : DataSource, optional
        The run's data settings, for the column names (defaults otherwise).

    Returns
    -------
    ImageSplit or TextSplit
    """
    if not isinstance(path, str | Path) or not str(path):
        raise ConfigError(FIELD, f"must be a file or folder path in quotes, got {path!r}")
    where = str(path)
    raw: Any = read_dataset(path, field=FIELD)
    import datasets

    if isinstance(raw, datasets.DatasetDict):
        if "train" not in raw:
            raise ConfigError(FIELD, f"{where}: has splits {list(raw)}; a site reads 'train'")
        raw = raw["train"]
    names = columns or DataSource()
    features, labels = read_split(raw, names, kind, where=where, field=FIELD, blame_file=True)
    site_names = source_class_names(raw, names.label_column)
    if class_names is not None and site_names is not None:
        labels = _by_name(labels, site_names, class_names, where=where)
    cols.check_label_range(labels, num_classes, field=FIELD, where=where)
    if isinstance(features, np.ndarray):
        if tuple(features.shape[1:]) != tuple(input_shape):
            want = ", ".join(map(str, ("N", *input_shape)))
            got = ", ".join(map(str, ("N", *features.shape[1:])))
            raise ConfigError(
                FIELD, f"{where}: the run's model takes images ({want}) (C, H, W), got ({got})"
            )
        return ImageSplit(features, labels)
    return TextSplit(features, labels)


def _by_name(
    labels: np.ndarray, site: tuple[str, ...], run: tuple[str, ...], *, where: str
) -> np.ndarray:
    unknown = sorted(set(site) - set(run))
    if unknown:
        raise ConfigError(
            FIELD, f"{where}: classes {unknown} are not among the run's classes {list(run)}"
        )
    cols.check_label_range(labels, len(site), field=FIELD, where=where)
    to_run = np.array([run.index(name) for name in site], dtype=np.int64)
    return np.take(to_run, labels)
