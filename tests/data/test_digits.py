import numpy as np

from fedrank.data import source as source_module
from fedrank.data.packaged import sklearn_digits
from fedrank.data.source import DataSource, load_image_data


def test_mnist5k_is_real_and_split_is_stratified() -> None:
    data = load_image_data(DataSource("mnist5k"))
    assert data.image_shape == (1, 28, 28)
    assert len(data.train) + len(data.test) == 5000
    assert np.bincount(data.test.labels).tolist() == [100] * 10
    assert data.train.images.min() >= 0.0
    assert data.train.images.max() <= 1.0


def test_the_digits_are_read_exactly_as_scikit_learn_loads_them() -> None:
    from sklearn.datasets import load_digits

    data, target = sklearn_digits()
    bunch = load_digits()

    np.testing.assert_array_equal(data, bunch.data)
    assert data.dtype == bunch.data.dtype
    np.testing.assert_array_equal(target, bunch.target)
    assert target.dtype == np.int64


def test_digits_loads_with_its_own_shape() -> None:
    data = load_image_data(DataSource("digits"))
    assert data.image_shape == (1, 8, 8)
    assert len(data.train) + len(data.test) == 1797


def test_held_out_split_is_fixed_and_disjoint() -> None:
    a = load_image_data(DataSource("digits"))
    source_module._full.cache_clear()  # load it again, not from the cache
    source_module._with_records.cache_clear()
    b = load_image_data(DataSource("digits"))
    np.testing.assert_array_equal(a.test.images, b.test.images)
    train_rows = {row.tobytes() for row in a.train.images}
    overlap = sum(row.tobytes() in train_rows for row in a.test.images)
    # sklearn's digits has a handful of exact duplicate images; a split leak would be hundreds.
    assert overlap < 10
