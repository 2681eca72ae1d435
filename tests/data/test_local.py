"""A site's own examples (data-path): loaded when right, refused with a clear reason when not."""

from __future__ import annotations

import numpy as np
import pytest

from fedrank.data.local import load_local_examples
from fedrank.errors import ConfigError

SHAPE = (1, 8, 8)


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def _images(n, rng, shape=SHAPE):
    return rng.random((n, *shape), dtype=np.float32)


def test_a_valid_file_loads_as_float_images_and_integer_labels(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = _images(5, rng), np.array([0, 1, 9, 3, 3], dtype=np.int32)
    path = _save(tmp_path / "own.npz", images=images, labels=labels)

    split = load_local_examples(path, image_shape=SHAPE, num_classes=10)

    assert len(split) == 5
    assert split.images.dtype == np.float32
    assert split.labels.dtype == np.int64
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)


def test_single_channel_images_may_omit_the_channel_axis(tmp_path):
    rng = np.random.default_rng(1)
    path = _save(tmp_path / "own.npz", images=_images(3, rng)[:, 0], labels=np.arange(3))

    split = load_local_examples(path, image_shape=SHAPE, num_classes=10)

    assert split.images.shape == (3, *SHAPE)


def test_uint8_pixels_are_scaled_to_the_unit_interval(tmp_path):
    pixels = np.array([0, 51, 255], dtype=np.uint8).repeat(64 // 3 + 1)[:64].reshape(1, 8, 8)
    path = _save(tmp_path / "own.npz", images=pixels[None], labels=np.array([4]))

    split = load_local_examples(path, image_shape=SHAPE, num_classes=10)

    np.testing.assert_array_equal(split.images, pixels[None].astype(np.float32) / 255)


def _bad_cases(tmp_path):
    rng = np.random.default_rng(2)
    good_images, good_labels = _images(4, rng), np.arange(4)
    np.save(tmp_path / "one.npy", good_images)
    (tmp_path / "text.npz").write_text("images,labels\n")
    return {
        "missing": (tmp_path / "nowhere.npz", "no such file"),
        "npy": (tmp_path / "one.npy", "unknown file type '.npy'"),
        "text": (tmp_path / "text.npz", "not an .npz archive"),
        "no labels": (_save(tmp_path / "a.npz", images=good_images), "no column 'label'"),
        "pickled": (
            _save(tmp_path / "b.npz", images=np.array([object()]), labels=good_labels),
            "pickles",
        ),
        "length": (
            _save(tmp_path / "c.npz", images=good_images, labels=np.arange(3)),
            "must pair up",
        ),
        "shape": (
            _save(tmp_path / "d.npz", images=_images(4, rng, (1, 28, 28)), labels=good_labels),
            "(N, 1, 8, 8)",
        ),
        "range": (
            _save(tmp_path / "f.npz", images=good_images * 255, labels=good_labels),
            "must lie in [0, 1]",
        ),
        "nan": (
            _save(tmp_path / "g.npz", images=np.full_like(good_images, np.nan), labels=good_labels),
            "NaN",
        ),
        "empty": (
            _save(tmp_path / "h.npz", images=good_images[:0], labels=good_labels[:0]),
            "no examples",
        ),
        "float labels": (
            _save(tmp_path / "i.npz", images=good_images, labels=good_labels.astype(float)),
            "labels must be integer class indices",
        ),
        "label range": (
            _save(tmp_path / "j.npz", images=good_images, labels=good_labels + 8),
            "labels must lie in [0, 9]",
        ),
    }


CASES = [
    "missing", "npy", "text", "no labels", "pickled", "length", "shape", "range", "nan",
    "empty", "float labels", "label range",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_bad_file_is_a_config_error_on_data_path(tmp_path, case):
    path, needle = _bad_cases(tmp_path)[case]

    with pytest.raises(ConfigError) as err:
        load_local_examples(path, image_shape=SHAPE, num_classes=10)

    assert err.value.field == "data-path"
    assert str(path) in str(err.value)
    assert needle in str(err.value)
