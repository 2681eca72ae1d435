"""Columns of a Hugging Face dataset turned into the arrays a task consumes, validated.

Each function reads one Arrow column and either returns images, texts or labels in
fedrank's types, or raises a one-line :class:`~fedrank.errors.ConfigError` that
names the field at fault and the file (or dataset) the column came from. Numeric
columns are converted through Arrow directly, without a Python object per value,
so that a 250,000-image set converts in a fraction of a second.

Images may be Hugging Face ``Image`` values (PIL; what ``imagefolder`` and
``save_to_disk`` of images give), ``Array2D``/``Array3D`` values, or nested lists of
numbers: ``(H, W)`` or ``(C, H, W)`` per example (channels first). Integer pixels
are read as 0-255 and scaled to [0, 1]; float pixels must already lie in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedrank.errors import ConfigError

# PIL modes read as they are (gray, color); a few others are converted first.
_GRAY, _COLOR = ("L",), ("RGB",)
_CONVERT = {"1": "L", "LA": "L", "P": "RGB", "RGBA": "RGB", "CMYK": "RGB", "YCbCr": "RGB"}


def column(
    table: pa.Table, name: str, *, setting: str, field: str | None = None, where: str
) -> pa.ChunkedArray:
    """Column ``name`` of ``table``, or a ConfigError listing the columns present.

    Parameters
    ----------
    setting : str
        The configuration field that names the column (``image-column``, ...): blamed
        unless ``field`` is given (a site's file is blamed on ``data-path`` instead).
    """
    if name not in table.column_names:
        raise ConfigError(
            field or setting,
            f"{where} has no column {name!r} ({setting}); its columns: {table.column_names}",
        )
    return table.column(name)


def image_array(col: pa.ChunkedArray, *, field: str, where: str) -> np.ndarray:
    """Images as float32 ``(N, C, H, W)`` in [0, 1].

    Parameters
    ----------
    col : pyarrow.ChunkedArray
        The image column.
    field : str
        Configuration field blamed on bad content (``dataset`` or ``data-path``).
    where : str
        The file or dataset, for the message.
    """
    array = col.combine_chunks()
    if isinstance(array.type, pa.ExtensionType):  # datasets' Array2D / Array3D
        array = array.storage
    if pa.types.is_struct(array.type) and {"bytes", "path"} <= {
        array.type.field(i).name for i in range(array.type.num_fields)
    }:
        values = _decoded_images(array, field=field, where=where)
    elif _is_list(array.type):
        values = _nested_numbers(array, field=field, where=where)
        if values.ndim == 3:
            values = values[:, None]
    else:
        raise ConfigError(
            field, f"{where}: the image column holds {array.type}, not images or lists of numbers"
        )
    if values.ndim != 4:
        raise ConfigError(
            field,
            f"{where}: each image must be (H, W) or (C, H, W), got {values.shape[1:]} per example",
        )
    return _unit_range(values, field=field, where=where)


def text_tuple(col: pa.ChunkedArray, *, field: str, where: str) -> tuple[str, ...]:
    """Texts as a tuple of str (a missing text is refused, not read as "None")."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ConfigError(field, f"{where}: the text column holds {col.type}, not strings")
    _refuse_nulls(col, "text", field=field, where=where)
    return tuple(col.to_pylist())


def label_array(col: pa.ChunkedArray, *, field: str, where: str) -> np.ndarray:
    """Labels as int64 ``(N,)``, each a non-negative integer (class index)."""
    if isinstance(col.type, pa.ExtensionType):
        raise ConfigError(field, f"{where}: the label column holds {col.type}, not integers")
    if not pa.types.is_integer(col.type):
        raise ConfigError(
            field,
            f"{where}: labels must be integer class indices, the column holds {col.type} "
            "(encode classes as 0..C-1, e.g. with datasets' class_encode_column)",
        )
    _refuse_nulls(col, "label", field=field, where=where)
    labels = np.asarray(col.to_numpy(), dtype=np.int64)
    if labels.size and labels.min() < 0:
        row = int(np.argmax(labels < 0))
        raise ConfigError(
            field, f"{where}: labels must be non-negative, row {row} has {labels[row]}"
        )
    return labels


def check_label_range(labels: np.ndarray, num_classes: int, *, field: str, where: str) -> None:
    """Refuse a label outside ``[0, num_classes)``, naming the first such row."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise ConfigError(
            field,
            f"{where}: labels must lie in [0, {num_classes - 1}], row {row} has {labels[row]}",
        )


def _is_list(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def _refuse_nulls(values: pa.Array | pa.ChunkedArray, what: str, *, field: str, where: str) -> None:
    if values.null_count:
        row = int(np.argmax(pc.is_null(values).to_numpy(zero_copy_only=False)))
        raise ConfigError(field, f"{where}: row {row} has no {what}")


def _nested_numbers(array: pa.Array, *, field: str, where: str) -> np.ndarray:
    """Nested lists of equal lengths as one numpy array (rows, then each nesting level)."""
    shape = [len(array)]
    while _is_list(array.type):
        _refuse_nulls(array, "image", field=field, where=where)
        if pa.types.is_fixed_size_list(array.type):
            size = array.type.list_size
        else:
            lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
            size = int(lengths[0]) if lengths.size else 0
            if lengths.size and (lengths != size).any():
                row = int(np.argmax(lengths != size))
                raise ConfigError(
                    field,
                    f"{where}: images differ in shape: at nesting level {len(shape)} element 0 "
                    f"has {size} entries, element {row} has {lengths[row]}",
                )
        shape.append(int(size))
        array = array.flatten()
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise ConfigError(field, f"{where}: image values must be numbers, got {array.type}")
    _refuse_nulls(array, "pixel value (null inside an image)", field=field, where=where)
    return np.asarray(array.to_numpy(zero_copy_only=False)).reshape(shape)


def _decoded_images(array: pa.StructArray, *, field: str, where: str) -> np.ndarray:
    """Decode Hugging Face ``Image`` values (encoded bytes or a file path) to uint8 CHW."""
    from datasets import Image

    decoder = Image()
    images: list[np.ndarray] = []
    for row, value in enumerate(array.to_pylist()):
        if value is None:
            raise ConfigError(field, f"{where}: row {row} has no image")
        try:
            picture: Any = decoder.decode_example(value)
            mode = _CONVERT.get(picture.mode, picture.mode)
            pixels = np.asarray(picture.convert(mode) if mode != picture.mode else picture)
        except (OSError, ValueError) as err:
            raise ConfigError(field, f"{where}: row {row}: unreadable image ({err})") from err
        if mode not in _GRAY + _COLOR:
            raise ConfigError(
                field, f"{where}: row {row} is a {picture.mode} image; use 8-bit gray or RGB"
            )
        chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if images and chw.shape != images[0].shape:
            raise ConfigError(
                field,
                f"{where}: images differ in shape: row 0 is {images[0].shape} (C, H, W), "
                f"row {row} is {chw.shape}",
            )
        images.append(chw)
    if not images:
        return np.zeros((0, 1, 1, 1), dtype=np.uint8)
    return np.stack(images)


def _unit_range(values: np.ndarray, *, field: str, where: str) -> np.ndarray:
    """Scale integer pixels (0-255) to [0, 1]; check float pixels are finite and in [0, 1]."""
    if values.size == 0:
        return values.astype(np.float32)
    if np.issubdtype(values.dtype, np.integer):
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 255:
            raise ConfigError(
                field, f"{where}: integer pixels must lie in [0, 255], got [{low}, {high}]"
            )
        scaled = values.astype(np.float32)
        scaled /= np.float32(255)  # in place: one float copy of the set, not two
        return scaled
    if not np.isfinite(values).all():
        row = int(np.argmax(~np.isfinite(values.reshape(len(values), -1)).all(axis=1)))
        raise ConfigError(field, f"{where}: images contain NaN or infinite values (row {row})")
    low_f, high_f = float(values.min()), float(values.max())
    if low_f < 0.0 or high_f > 1.0:
        raise ConfigError(
            field,
            f"{where}: float pixels must lie in [0, 1] (scale them), got [{low_f:g}, {high_f:g}]",
        )
    return values.astype(np.float32, copy=False)
