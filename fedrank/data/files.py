"""Read a dataset from local files into Hugging Face ``datasets`` objects, in memory.

Accepted (the format follows from the path):

- a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``;
- a ``.csv``, ``.json``/``.jsonl``, ``.parquet`` or ``.arrow`` file;
- any other folder: read by ``datasets.load_dataset(folder)``, which infers the
  format from the files (csv/json/parquet, or ``imagefolder``: one subfolder per
  class, with ``train``/``test`` split folders or file names when present);
- a ``.npz`` file of numpy arrays of equal length, one column per array
  (``images``/``labels``, the format sites used before, are read as ``image``/``label``).

Nothing is written outside a temporary folder that is removed again: the Hugging Face
builders get a throw-away cache and keep the tables in memory.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from fedrank.errors import ConfigError

FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
FILE_FORMATS[".arrow"] = "arrow"
_LEGACY_NPZ_NAMES = {"images": "image", "labels": "label"}
_ACCEPTED = (
    "a save_to_disk folder, a folder of csv/json/parquet files or images, "
    f"or a {'/'.join(sorted([*FILE_FORMATS, '.npz']))} file"
)


def read_dataset(path: str | Path, *, field: str) -> object:
    """The dataset at ``path``: a ``datasets.Dataset`` or a ``datasets.DatasetDict``.

    Parameters
    ----------
    path : str or Path
        A file or folder (see the module docstring for the formats).
    field : str
        The configuration field that named the path (``dataset`` or ``data-path``);
        every problem is a :class:`~fedrank.errors.ConfigError` on it.

    Returns
    -------
    datasets.Dataset or datasets.DatasetDict
        Typed ``object`` because ``datasets`` ships no type information.
    """
    where = Path(path)
    if not where.exists():
        raise ConfigError(field, f"{where}: no such file or folder")
    if where.is_file() and where.suffix.lower() == ".npz":
        return _npz_dataset(where, field=field)
    if where.is_file() and where.suffix.lower() not in FILE_FORMATS:
        raise ConfigError(
            field, f"{where}: unknown file type {where.suffix or '(none)'!r}; give {_ACCEPTED}"
        )
    try:
        return _hf_read(where)
    except ConfigError:
        raise
    except Exception as err:  # the readers raise many types (arrow, json, builder errors)
        if _holds_no_rows(where):  # the builders' own words for this are obscure
            raise ConfigError(field, f"{where}: holds no examples") from err
        raise ConfigError(
            field, f"{where}: cannot be read as a dataset ({_root_cause(err)})"
        ) from err


def _root_cause(err: BaseException) -> str:
    """The innermost cause's first line: the builders wrap the reader's own error."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _holds_no_rows(where: Path) -> bool:
    """Whether a file that failed to read is merely empty (no data rows)."""
    if not where.is_file():
        return False
    try:
        if where.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return bool(pq.read_metadata(where).num_rows == 0)
        lines = [line for line in where.read_text(errors="replace").splitlines() if line.strip()]
    except Exception:  # unreadable as well as not empty: the caller reports the reader's error
        return False
    header = 1 if where.suffix.lower() == ".csv" else 0
    return len(lines) <= header or (header == 0 and "".join(lines).strip() == "[]")


def _hf_read(where: Path) -> object:
    import datasets

    with _quiet(), tempfile.TemporaryDirectory(prefix="fedrank-hf-") as cache:
        if where.is_dir() and (
            (where / "dataset_dict.json").is_file() or (where / "state.json").is_file()
        ):
            return datasets.load_from_disk(str(where), keep_in_memory=True)
        if where.is_dir():
            return datasets.load_dataset(str(where), cache_dir=cache, keep_in_memory=True)
        return datasets.load_dataset(
            FILE_FORMATS[where.suffix.lower()],
            data_files=str(where),
            cache_dir=cache,
            keep_in_memory=True,
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars from ``datasets`` while we read, as the caller had them before."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _npz_dataset(path: Path, *, field: str) -> object:
    if not zipfile.is_zipfile(path):
        raise ConfigError(field, f"{path}: not an .npz archive (save arrays with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name]) for name in archive.files}
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ConfigError(field, f"{path}: not a readable .npz file ({err})") from err
    except ValueError as err:
        raise ConfigError(
            field, f"{path}: holds object arrays, which are refused (pickles): {err}"
        ) from err
    if not arrays:
        raise ConfigError(field, f"{path}: holds no arrays")
    shapes = {name: a.shape for name, a in arrays.items()}
    if any(a.ndim == 0 for a in arrays.values()) or len({s[0] for s in shapes.values()}) != 1:
        raise ConfigError(
            field, f"{path}: arrays must pair up as (N, ...) each, got shapes {shapes}"
        )
    columns = {_LEGACY_NPZ_NAMES.get(name, name): arrays[name] for name in arrays}
    return dataset_from_arrays(columns)


def dataset_from_arrays(columns: Mapping[str, np.ndarray | Sequence[str]]) -> object:
    """An in-memory ``datasets.Dataset`` with one column per array (first axis: rows).

    Arrays of more than one axis become nested fixed-size lists, built without a
    Python object per value (the way fedrank's packaged image sets are stored); a
    sequence of str becomes a string column.
    """
    import datasets
    from datasets.table import InMemoryTable

    table = pa.table({name: _arrow(values) for name, values in columns.items()})
    # A fingerprint given up front: ``datasets`` would otherwise hash every value
    # (0.4 s for 200,000 rows), and nothing of ours is cached on disk under it.
    return datasets.Dataset(InMemoryTable(table), fingerprint=uuid.uuid4().hex)


def _arrow(values: np.ndarray | Sequence[str]) -> pa.Array:
    if not isinstance(values, np.ndarray) or values.dtype.kind in "US":
        return pa.array([str(v) for v in values], type=pa.string())
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(values.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat
