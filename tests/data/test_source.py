"""Every source the data layer reads: packaged sets and each file format, round-tripped."""

from __future__ import annotations

import hashlib

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.data.files import dataset_from_arrays
from fedrank.data.packaged import synthetic_digits
from fedrank.data.source import (
    DataSource,
    convert,
    load_data,
    load_image_data,
    load_text_data,
)
from fedrank.data.splits import ImageData, TextData, seeded_rows
from fedrank.data.text import load_rotten_tomatoes
from tests.data.formats import gray_images, pil_dataset, write_image_folder

TEXTS = ["good film", "dull", "a delight", "boring plot", "fine", "awful", "great", "meh"]


# --- packaged sets -------------------------------------------------------------------


# sha256 prefixes of (train images, train labels, test images, test labels) as the
# former loader (fedrank.data.digits before the data layer, commit a4bc889) gave them.
FORMER = {
    "mnist5k": ("0011cba29508cb7b", "f2c7748a0e6d020e", "58a80f0e6f2c1e40", "bbdaed34ddb84891"),
    "digits": ("6794f2a87a2ee169", "ba751898ef4721aa", "ad012a838b418709", "4eda2d714f067884"),
}


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(FORMER))
def test_packaged_digit_sets_give_the_examples_they_gave_before(name) -> None:
    data = load_image_data(DataSource(name))

    parts = (data.train.images, data.train.labels, data.test.images, data.test.labels)
    assert tuple(_digest(p) for p in parts) == FORMER[name]
    assert data.num_classes == 10
    assert data.kind == "image"
    assert data.train.images.dtype == np.float32
    assert data.train.labels.dtype == np.int64


def test_packaged_shapes_and_sizes() -> None:
    mnist, digits = load_image_data(DataSource("mnist5k")), load_image_data(DataSource("digits"))

    assert mnist.input_shape == (1, 28, 28)
    assert digits.input_shape == (1, 8, 8)
    assert (len(mnist.train), len(mnist.test)) == (4000, 1000)
    assert np.bincount(mnist.test.labels).tolist() == [100] * 10
    assert (len(digits.train), len(digits.test)) == (1438, 359)


def test_rotten_tomatoes_is_served_as_text_with_the_former_split() -> None:
    data = load_text_data(DataSource("rotten-tomatoes"))

    assert isinstance(data, TextData)
    assert data.kind == "text"
    assert data.input_shape == ()
    assert data.num_classes == 2
    assert data.test.texts == load_rotten_tomatoes("test").texts
    np.testing.assert_array_equal(data.train.labels, load_rotten_tomatoes("train").labels)


def test_records_subsets_are_seeded_for_train_and_fixed_for_test() -> None:
    source = DataSource("rotten-tomatoes", train_records=300, test_records=50)

    a, b = load_text_data(source, seed=1), load_text_data(source, seed=2)
    full = load_text_data(DataSource("rotten-tomatoes"))

    assert (len(a.train), len(a.test)) == (300, 50)
    assert a.test.texts == b.test.texts
    assert a.train.texts != b.train.texts
    # The rule lora_task used: sorted prefix of a seeded permutation.
    chosen = np.sort(np.random.default_rng(1).permutation(len(full.train))[:300])
    assert a.train.texts == full.train.subset(chosen).texts
    assert seeded_rows(10, 0, seed=3).tolist() == list(range(10))


def test_synthetic_digits_are_deterministic_balanced_and_learnable() -> None:
    x1, y1 = synthetic_digits(6_000, seed=7)
    x2, _ = synthetic_digits(6_000, seed=7)
    np.testing.assert_array_equal(x1, x2)
    assert x1.shape == (6_000, 1, 8, 8)
    assert x1.dtype == np.uint8
    assert np.bincount(y1).tolist() == [600] * 10

    # Three epochs of a small MLP on 5,000 examples: far above chance (10%), 0.797.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.tensor(x1.reshape(-1, 64), dtype=torch.float32) / 255
    y = torch.tensor(y1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend
    try:
        for start in [s for _ in range(3) for s in range(0, 5_000, 50)]:
            opt.zero_grad()
            batch = slice(start, start + 50)
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    accuracy = (model(x[5_000:]).argmax(1) == y[5_000:]).float().mean().item()
    assert accuracy > 0.7


def test_synthetic_digits_set_is_large_enough_for_ten_thousand_clients() -> None:
    data = load_image_data(DataSource("synthetic-digits"))

    assert len(data.train) == 200_000
    assert len(data.test) == 50_000
    assert data.train.images.dtype == np.float32
    assert data.input_shape == (1, 8, 8)
    assert load_image_data(DataSource("synthetic-digits")) is data  # cached per process


# --- formats -------------------------------------------------------------------------


def test_save_to_disk_dataset_dict_of_pil_images_keeps_its_splits(tmp_path) -> None:
    pixels, labels = gray_images(12), np.arange(12) % 3
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        train=pil_dataset(pixels[:9], labels[:9], ["a", "b", "c"]),
        test=pil_dataset(pixels[9:], labels[9:], ["a", "b", "c"]),
    ).save_to_disk(str(folder))

    data = load_image_data(DataSource(str(folder)))

    assert data.num_classes == 3
    assert data.input_shape == (1, 8, 8)
    np.testing.assert_array_equal(data.train.images[:, 0], pixels[:9] / np.float32(255))
    np.testing.assert_array_equal(data.test.labels, labels[9:])


def test_save_to_disk_single_table_is_split_by_test_fraction(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((40, 2, 3, 3)).astype(np.float32)
    labels = np.arange(40) % 4
    folder = tmp_path / "one"
    datasets.Dataset.from_dict({"image": images.tolist(), "label": labels}).save_to_disk(
        str(folder)
    )

    data = load_image_data(DataSource(str(folder), test_fraction=0.25))

    # round(10 * 0.25) = 2 test examples of each of the 4 classes
    assert (len(data.train), len(data.test)) == (32, 8)
    assert np.bincount(data.test.labels).tolist() == [2, 2, 2, 2]
    together = np.concatenate([data.train.images, data.test.images])
    np.testing.assert_array_equal(
        np.sort(together.reshape(40, -1), 0), np.sort(images.reshape(40, -1), 0)
    )
    again = load_image_data(DataSource(str(folder), test_fraction=0.25), seed=99)
    np.testing.assert_array_equal(again.test.images, data.test.images)  # not the run seed


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_text_files_load_with_their_own_column_names(tmp_path, suffix) -> None:
    frame = pd.DataFrame({"review": TEXTS * 3, "stars": [1, 0, 1, 0, 1, 0, 1, 0] * 3})
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=suffix == ".jsonl")
    source = DataSource(str(path), text_column="review", label_column="stars", test_fraction=0.25)

    data = load_data(source)

    assert isinstance(data, TextData)
    assert data.num_classes == 2
    assert sorted(data.train.texts + data.test.texts) == sorted(TEXTS * 3)
    assert (len(data.train), len(data.test)) == (18, 6)


def test_a_folder_of_train_and_test_csv_files_keeps_its_splits(tmp_path) -> None:
    pd.DataFrame({"text": TEXTS[:6], "label": [0, 1, 2, 0, 1, 2]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    pd.DataFrame({"text": TEXTS[6:], "label": [2, 0]}).to_csv(tmp_path / "test.csv", index=False)

    data = load_text_data(DataSource(str(tmp_path)))

    assert data.train.texts == tuple(TEXTS[:6])
    assert data.test.texts == tuple(TEXTS[6:])
    assert data.num_classes == 3


def test_image_folder_tree_reads_classes_from_folder_names(tmp_path) -> None:
    pixels = gray_images(8, size=5)
    root = write_image_folder(
        tmp_path / "tree",
        {
            "train": {"cat": pixels[:3], "dog": pixels[3:6]},
            "test": {"cat": pixels[6:7], "dog": pixels[7:]},
        },
    )

    data = load_image_data(DataSource(str(root)))

    assert data.input_shape == (1, 5, 5)
    assert data.num_classes == 2
    assert sorted(data.train.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    cats = data.train.images[data.train.labels == 0][:, 0]
    assert {c.tobytes() for c in cats} == {(p / np.float32(255)).tobytes() for p in pixels[:3]}


def test_parquet_of_rgb_images_gives_three_channels(tmp_path) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (10, 4, 6, 3), dtype=np.uint8)
    path = tmp_path / "rgb.parquet"
    pil_dataset(rgb, np.arange(10) % 2, ["x", "y"]).to_parquet(str(path))

    data = load_image_data(DataSource(str(path), test_fraction=0.2))

    assert data.input_shape == (3, 4, 6)
    together = np.concatenate([data.train.images, data.test.images]) * 255
    expected = rgb.transpose(0, 3, 1, 2).astype(np.float32)
    assert {r.round().tobytes() for r in together} == {r.tobytes() for r in expected}


def test_npz_images_load_like_the_former_site_files(tmp_path) -> None:
    images = np.random.default_rng(4).random((20, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(20) % 5)

    data = load_image_data(DataSource(str(tmp_path / "d.npz")))

    assert data.input_shape == (1, 8, 8)
    assert data.num_classes == 5
    assert len(data.train) + len(data.test) == 20


@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
    n=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=25, deadline=None)
def test_nested_uint8_images_round_trip_exactly(shape, n, seed) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    raw = datasets.DatasetDict(
        train=dataset_from_arrays({"image": pixels, "label": labels}),
        test=dataset_from_arrays({"image": pixels[:1], "label": labels[:1]}),
    )

    data = convert(raw, DataSource("mem"), kind=None, split_seed=0, where="mem")

    assert isinstance(data, ImageData)
    np.testing.assert_array_equal(data.train.images, pixels.astype(np.float32) / 255)
