"""A site's own data (data-path), images or text, checked against the run before training."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest

from fedrank.data.site import load_site_data
from fedrank.data.source import DataSource, load_image_data
from fedrank.data.splits import ImageSplit, TextSplit
from fedrank.errors import ConfigError
from tests.data.formats import gray_images, pil_dataset, write_image_folder


def test_an_image_folder_site_loads_against_the_runs_shape(tmp_path) -> None:
    pixels = gray_images(4, size=8)
    root = write_image_folder(tmp_path / "site", {"train": {"0": pixels[:2], "1": pixels[2:]}})

    split = load_site_data(root, kind="image", input_shape=(1, 8, 8), num_classes=10)

    assert isinstance(split, ImageSplit)
    assert split.images.shape == (4, 1, 8, 8)
    assert sorted(split.labels.tolist()) == [0, 0, 1, 1]


def test_a_site_holding_some_classes_keeps_the_runs_class_indices(tmp_path) -> None:
    pixels = gray_images(4)
    root = write_image_folder(tmp_path / "s", {"train": {"cat": pixels[:2], "dog": pixels[2:]}})
    run = ("bird", "cat", "dog")

    split = load_site_data(
        root, kind="image", input_shape=(1, 8, 8), num_classes=3, class_names=run
    )

    assert sorted(split.labels.tolist()) == [1, 1, 2, 2]
    with pytest.raises(ConfigError, match=r"classes \['dog'\] are not among"):
        load_site_data(
            root, kind="image", input_shape=(1, 8, 8), num_classes=3, class_names=("bird", "cat")
        )


def test_run_class_names_come_from_the_label_column(tmp_path) -> None:
    pixels = gray_images(6)
    root = write_image_folder(
        tmp_path / "r",
        {"train": {"b": pixels[:2], "a": pixels[2:4]}, "test": {"a": pixels[4:5], "b": pixels[5:]}},
    )

    assert load_image_data(DataSource(str(root))).class_names == ("a", "b")
    assert load_image_data(DataSource("digits")).class_names is None


def test_a_text_site_reads_the_runs_column_names(tmp_path) -> None:
    path = tmp_path / "notes.csv"
    pd.DataFrame({"note": ["fine", "bad", "good"], "y": [1, 0, 1]}).to_csv(path, index=False)
    columns = DataSource("rotten-tomatoes", text_column="note", label_column="y")

    split = load_site_data(path, kind="text", input_shape=(), num_classes=2, columns=columns)

    assert isinstance(split, TextSplit)
    assert split.texts == ("fine", "bad", "good")
    assert split.labels.tolist() == [1, 0, 1]


def test_a_dataset_dict_site_trains_on_its_train_split_only(tmp_path) -> None:
    pixels = gray_images(5)
    datasets.DatasetDict(
        train=pil_dataset(pixels[:3], np.array([0, 1, 2]), ["a", "b", "c"]),
        test=pil_dataset(pixels[3:], np.array([0, 1]), ["a", "b", "c"]),
    ).save_to_disk(str(tmp_path / "dd"))

    split = load_site_data(tmp_path / "dd", kind="image", input_shape=(1, 8, 8), num_classes=3)

    assert len(split) == 3


def _bad(tmp):
    np.savez(tmp / "big.npz", images=gray_images(3, size=28), labels=np.arange(3))
    np.savez(tmp / "rgb.npz", images=np.zeros((2, 3, 8, 8), np.uint8), labels=np.arange(2))
    np.savez(tmp / "many.npz", images=gray_images(3), labels=np.array([0, 1, 12]))
    pd.DataFrame({"text": ["x"], "label": [0]}).to_csv(tmp / "text.csv", index=False)
    pd.DataFrame({"image": ["x"], "label": [0]}).to_csv(tmp / "strings.csv", index=False)
    datasets.DatasetDict(valid=pil_dataset(gray_images(1), np.array([0]), ["a"])).save_to_disk(
        str(tmp / "nt")
    )
    return {
        "missing": (tmp / "absent.parquet", "image", "no such file"),
        "shape": (
            tmp / "big.npz",
            "image",
            "takes images (N, 1, 8, 8) (C, H, W), got (N, 1, 28, 28)",
        ),
        "channels": (tmp / "rgb.npz", "image", "got (N, 3, 8, 8)"),
        "classes": (tmp / "many.npz", "image", "labels must lie in [0, 9], row 2 has 12"),
        "text for an image run": (tmp / "text.csv", "image", "no column 'image' (image-column)"),
        "images for a text run": (tmp / "big.npz", "text", "no column 'text' (text-column)"),
        "not images": (tmp / "strings.csv", "image", "not images or lists of numbers"),
        "no train split": (tmp / "nt", "image", "a site reads 'train'"),
    }


CASES = [
    "missing", "shape", "channels", "classes", "text for an image run", "images for a text run",
    "not images", "no train split",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_bad_site_file_is_one_line_on_data_path(tmp_path, case) -> None:
    path, kind, needle = _bad(tmp_path)[case]

    with pytest.raises(ConfigError) as err:
        load_site_data(path, kind=kind, input_shape=(1, 8, 8), num_classes=10)

    assert err.value.field == "data-path"
    assert str(path) in str(err.value)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_every_site_case_is_listed(tmp_path) -> None:
    assert sorted(CASES) == sorted(_bad(tmp_path))


def test_a_path_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ConfigError, match="data-path"):
        load_site_data("", kind="image", input_shape=(1, 8, 8), num_classes=10)
