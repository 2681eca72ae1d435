"""Every bad dataset is one ConfigError naming the field and the file, before anything runs."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from fedrank.data.files import dataset_from_arrays
from fedrank.data.source import DataSource, load_data, load_image_data, load_text_data
from fedrank.errors import ConfigError
from tests.data.formats import gray_images, pil_dataset


def _csv(path: Path, **columns: list[object]) -> Path:
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def _disk(path: Path, raw: datasets.Dataset | datasets.DatasetDict) -> Path:
    raw.save_to_disk(str(path))
    return path


def _images(path: Path, images: object, labels: object) -> Path:
    return _disk(path, datasets.Dataset.from_dict({"image": images, "label": labels}))


def _parquet_empty(tmp: Path) -> Path:
    path = tmp / "empty.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=int)}).to_parquet(
        path
    )
    return path


def _cases(tmp: Path) -> dict[str, tuple[DataSource, str | None, str, str]]:
    """name -> (source, kind, field, needle)."""
    four = gray_images(4).astype(np.float32) / 255
    labels = [0, 1, 0, 1]
    (tmp / "notes.txt").write_text("hello")
    (tmp / "broken.parquet").write_bytes(b"not parquet at all")
    text = _csv(tmp / "t.csv", text=["a", "b", "c", "d"], label=labels)
    ragged = [[[0.1, 0.2], [0.3, 0.4]], [[0.1], [0.2]], [[0.1, 0.2], [0.3, 0.4]], [[0, 0], [0, 0]]]
    sizes = np.zeros((1, 5, 5), np.uint8)
    odd = datasets.concatenate_datasets(
        [
            pil_dataset(gray_images(3), np.array([0, 1, 0]), ["a", "b"]),
            pil_dataset(sizes, np.array([1]), ["a", "b"]),
        ]
    )
    split_shapes = datasets.DatasetDict(
        train=dataset_from_arrays({"image": four, "label": np.array(labels)}),
        test=dataset_from_arrays({"image": four[:, :4, :4], "label": np.array(labels)}),
    )
    class_train = datasets.Dataset.from_dict(
        {"text": ["a", "b"], "label": [0, 1]},
        features=datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["n", "p"])}
        ),
    )
    return {
        "no such path": (DataSource(str(tmp / "nowhere")), None, "dataset", "no such file"),
        "unknown type": (DataSource(str(tmp / "notes.txt")), None, "dataset", "unknown file type"),
        "unreadable": (DataSource(str(tmp / "broken.parquet")), None, "dataset", "cannot be read"),
        "no image column": (DataSource(str(text)), "image", "image-column", "'text', 'label'"),
        "no text column": (
            DataSource(str(text), text_column="review"),
            "text",
            "text-column",
            "no column 'review'",
        ),
        "no label column": (
            DataSource(str(text), label_column="y"),
            "text",
            "label-column",
            "no column 'y'",
        ),
        "neither column": (
            DataSource(str(_csv(tmp / "n.csv", x=[1, 2], label=[0, 1]))),
            None,
            "image-column",
            "neither",
        ),
        "negative label": (
            DataSource(str(_csv(tmp / "neg.csv", text=["a", "b"], label=[0, -1]))),
            None,
            "dataset",
            "non-negative, row 1 has -1",
        ),
        "float labels": (
            DataSource(str(_csv(tmp / "fl.csv", text=["a", "b"], label=[0.5, 1.0]))),
            None,
            "dataset",
            "integer class indices",
        ),
        "string labels": (
            DataSource(str(_csv(tmp / "sl.csv", text=["a", "b"], label=["pos", "neg"]))),
            None,
            "dataset",
            "integer class indices",
        ),
        "label beyond its classes": (
            DataSource(
                str(
                    _disk(
                        tmp / "cl",
                        datasets.DatasetDict(
                            train=class_train,
                            test=datasets.Dataset.from_dict({"text": ["c"], "label": [5]}),
                        ),
                    )
                )
            ),
            None,
            "dataset",
            "labels must lie in [0, 1], row 0 has 5",
        ),
        "nan pixels": (
            DataSource(
                str(_images(tmp / "nan", np.where(four > 0.5, np.nan, four).tolist(), labels))
            ),
            None,
            "dataset",
            "NaN or infinite",
        ),
        "inf pixels": (
            DataSource(
                str(_images(tmp / "inf", np.where(four > 0.5, np.inf, four).tolist(), labels))
            ),
            None,
            "dataset",
            "NaN or infinite",
        ),
        "pixels out of range": (
            DataSource(str(_images(tmp / "big", (four * 3).tolist(), labels))),
            None,
            "dataset",
            "must lie in [0, 1]",
        ),
        "ragged lists": (
            DataSource(str(_images(tmp / "rag", ragged, labels))),
            None,
            "dataset",
            "differ in shape",
        ),
        "pil sizes differ": (
            DataSource(str(_disk(tmp / "pil", odd))),
            None,
            "dataset",
            "differ in shape",
        ),
        "flat vectors": (
            DataSource(str(_images(tmp / "flat", four.reshape(4, -1).tolist(), labels))),
            None,
            "dataset",
            "(H, W) or (C, H, W)",
        ),
        "train and test shapes": (
            DataSource(str(_disk(tmp / "ts", split_shapes))),
            None,
            "dataset",
            "test images are",
        ),
        "empty": (DataSource(str(_parquet_empty(tmp))), "text", "dataset", "no examples"),
        "empty csv": (
            DataSource(str(_csv(tmp / "e.csv", text=[], label=[]))),
            "text",
            "dataset",
            "no examples",
        ),
        "empty table": (
            DataSource(
                str(_disk(tmp / "e", datasets.Dataset.from_dict({"text": [], "label": []})))
            ),
            "text",
            "dataset",
            "no examples",
        ),
        "no train split": (
            DataSource(str(_disk(tmp / "nt", datasets.DatasetDict(valid=class_train)))),
            None,
            "dataset",
            "needs 'train'",
        ),
        "text not strings": (
            DataSource(str(_csv(tmp / "ns.csv", text=[1, 2], label=[0, 1]))),
            "text",
            "dataset",
            "not strings",
        ),
        "missing text": (
            DataSource(str(_csv(tmp / "mt.csv", text=["a", None], label=[0, 1]))),
            "text",
            "dataset",
            "row 1 has no text",
        ),
        "test fraction too small": (
            DataSource(
                str(_csv(tmp / "two.csv", text=["a", "b"], label=[0, 1])), test_fraction=0.1
            ),
            None,
            "test-fraction",
            "leaves an empty train or test split",
        ),
        "packaged text for images": (
            DataSource("rotten-tomatoes"),
            "image",
            "dataset",
            "text dataset",
        ),
        "packaged images for text": (DataSource("digits"), "text", "dataset", "image dataset"),
    }


CASES = [
    "no such path", "unknown type", "unreadable", "no image column", "no text column",
    "no label column", "neither column", "negative label", "float labels", "string labels",
    "label beyond its classes", "nan pixels", "inf pixels", "pixels out of range", "ragged lists",
    "pil sizes differ", "flat vectors", "train and test shapes", "empty", "empty csv",
    "empty table", "no train split", "text not strings", "missing text",
    "test fraction too small", "packaged text for images", "packaged images for text",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_bad_dataset_is_one_line_naming_field_and_file(tmp_path, case) -> None:
    source, kind, field, needle = _cases(tmp_path)[case]

    with pytest.raises(ConfigError) as err:
        load_data(source, kind=kind)  # type: ignore[arg-type]

    message = str(err.value)
    assert err.value.field == field
    assert needle in message
    assert source.dataset in message
    assert "\n" not in message


def test_every_case_is_listed(tmp_path) -> None:
    assert sorted(CASES) == sorted(_cases(tmp_path))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"dataset": ""}, "dataset"),
        ({"image_column": " "}, "image-column"),
        ({"label_column": 3}, "label-column"),
        ({"test_fraction": 1.0}, "test-fraction"),
        ({"test_fraction": float("nan")}, "test-fraction"),
        ({"train_records": -1}, "train-records"),
        ({"test_records": True}, "test-records"),
    ],
)
def test_data_source_refuses_bad_settings(changes, field) -> None:
    with pytest.raises(ConfigError) as err:
        DataSource(**changes)
    assert err.value.field == field


def test_the_typed_loaders_refuse_the_other_kind(tmp_path) -> None:
    text = _csv(tmp_path / "t.csv", text=["a", "b", "c", "d"], label=[0, 1, 0, 1])

    with pytest.raises(ConfigError, match="image-column"):
        load_image_data(DataSource(str(text)))
    assert load_text_data(DataSource(str(text), test_fraction=0.5)).num_classes == 2
