"""A site's ``data-path`` checked when its SuperNode starts, before Flower starts.

The file or folder must exist and read as a dataset in one of the data layer's
formats (:func:`fedrank.data.files.read_dataset`: ``.npz``, csv/json/jsonl/parquet, a
``save_to_disk`` folder, an image folder). Whether it fits a run (image shape,
classes, columns) depends on that run's settings, which reach the site only when a
run starts; the ClientApp checks that in the run's discovery, before any round.
"""

from __future__ import annotations

from pathlib import Path

from fedrank.errors import ConfigError

FIELD = "data-path"


def check_site_data(path: str | Path) -> Path:
    """The absolute path of a site's readable dataset at ``path``.

    Raises
    ------
    ConfigError
        ``data-path``: missing, or not readable as a dataset (one line, naming the file).
    """
    from fedrank.data.files import read_dataset

    where = Path(path).expanduser().resolve()
    if not where.exists():
        raise ConfigError(FIELD, f"{where}: no such file or folder on this site")
    read_dataset(where, field=FIELD)
    return where
